"""``kernel.session.send(kernel.iopub_socket, ...)``: code written against ipykernel.

Libraries and notebooks publish on iopub themselves through ipykernel's
``kernel.session`` and ``kernel.iopub_socket`` (and ``kernel.send_response``).
In relaykernel the worker has no iopub socket; these stand-ins relay the
signed message to the supervisor.  The same tests pass on ipykernel
(RELAYKERNEL_TEST_KERNEL=ipykernel).
"""

from __future__ import annotations

from tests.kernel.helpers import IS_IPYKERNEL, execute_ok, get_reply, of_type, outputs


def test_session_send_on_iopub_socket_reaches_the_frontend_in_order(kernel):
    kc = kernel.kc
    code = (
        "k = get_ipython().kernel\n"
        "print('first', flush=True)\n"
        "k.session.send(k.iopub_socket, 'display_data',\n"
        "               {'data': {'text/plain': 'from session.send'}, 'metadata': {}, 'transient': {}},\n"
        "               parent=k.get_parent(), ident=b'display_data')\n"
        "k.send_response(k.iopub_socket, 'display_data',\n"
        "                {'data': {'text/plain': 'from send_response'}, 'metadata': {}, 'transient': {}})\n"
        "print('count', k.execution_count)\n"
    )
    reply, iopub = execute_ok(kc, code)  # the client verifies every signature
    shown = [(m["msg_type"], m["content"].get("text") or m["content"]["data"]["text/plain"])
             for m in outputs(iopub)]
    assert shown[0] == ("stream", "first\n")
    assert shown[1:3] == [("display_data", "from session.send"), ("display_data", "from send_response")]
    count = reply['content']['execution_count'] + 1
    assert "".join(text for kind, text in shown[3:] if kind == "stream") == f"count {count}\n"


def test_comm_messages_sent_through_session_are_comm_traffic(kernel):
    """A comm opened with session.send is one the supervisor's registry knows
    (comm_info; it survives a worker crash), and its buffers arrive as binary frames."""
    kc = kernel.kc
    code = (
        "k = get_ipython().kernel\n"
        "k.session.send(k.iopub_socket, 'comm_open',\n"
        "               {'comm_id': 'session-comm-1', 'target_name': 'session_target', 'data': {'a': 1}},\n"
        "               parent=k.get_parent())\n"
        "k.session.send(k.iopub_socket, 'comm_msg', {'comm_id': 'session-comm-1', 'data': {'b': 2}},\n"
        "               parent=k.get_parent(), buffers=[b'\\x00\\x01binary', memoryview(b'second')])\n"
    )
    _, iopub = execute_ok(kc, code)
    opened = of_type(iopub, "comm_open")
    assert [m["content"]["comm_id"] for m in opened] == ["session-comm-1"]
    (sent,) = of_type(iopub, "comm_msg")
    assert sent["content"]["data"] == {"b": 2}
    assert [bytes(b) for b in sent["buffers"]] == [b"\x00\x01binary", b"second"]
    if IS_IPYKERNEL:  # its comm_info asks its comm manager, which never saw this comm
        return
    msg_id = kc.comm_info(target_name="session_target")
    comms = get_reply(kc, msg_id, timeout=30)["content"]["comms"]
    assert comms == {"session-comm-1": {"target_name": "session_target"}}
