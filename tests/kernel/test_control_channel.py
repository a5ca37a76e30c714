"""Requests on the control channel, and request types nobody handles.

ipykernel answers every shell request type on control as well (a frontend may
ask there when shell is busy); relaykernel runs the worker's ones next, ahead
of the shell requests still waiting.  A request type the kernel does not
handle gets an error reply saying so, on either channel, so that a client
waiting for it does not hang (ipykernel sends nothing: relaykernel only).
"""

from __future__ import annotations

from typing import Any

from tests.kernel.helpers import (
    collect_iopub_until_idle,
    evaluate,
    execute_ok,
    get_reply,
    relaykernel_only,
)


def _ask(kc: Any, channel: str, msg_type: str, content: dict[str, Any] | None = None) -> str:
    msg = kc.session.msg(msg_type, content or {})
    getattr(kc, f"{channel}_channel").send(msg)
    return str(msg["header"]["msg_id"])


def test_shell_request_types_are_answered_on_control(kernel):
    kc = kernel.kc
    execute_ok(kc, "alpha_value = 41")
    asks = {
        "comm_info_request": {},
        "is_complete_request": {"code": "for i in x:"},
        "complete_request": {"code": "alpha_v", "cursor_pos": 7},
        "inspect_request": {"code": "alpha_value", "cursor_pos": 5, "detail_level": 0},
        "history_request": {"hist_access_type": "tail", "n": 5, "output": False, "raw": True},
        "execute_request": {"code": "alpha_value += 1", "silent": False, "store_history": False,
                            "user_expressions": {}, "allow_stdin": False},
    }
    replies = {}
    for msg_type, content in asks.items():
        msg_id = _ask(kc, "control", msg_type, content)
        reply = get_reply(kc, msg_id, channel="control", timeout=30)
        iopub = collect_iopub_until_idle(kc, msg_id, timeout=30)
        states = [m["content"]["execution_state"] for m in iopub if m["msg_type"] == "status"]
        assert states == ["busy", "idle"], (msg_type, states)
        assert reply["msg_type"] == msg_type.replace("_request", "_reply")
        replies[msg_type] = reply["content"]
        if msg_type != "is_complete_request":  # its status is the verdict
            assert reply["content"]["status"] == "ok", (msg_type, reply["content"])
    assert replies["is_complete_request"]["status"] == "incomplete"
    assert "alpha_value" in replies["complete_request"]["matches"]
    assert replies["inspect_request"]["found"] is True
    assert "alpha_value = 41" in [h[2] for h in replies["history_request"]["history"]]
    assert evaluate(kc, "alpha_value") == "42"


def test_control_request_runs_before_waiting_shell_requests(kernel):
    """While a cell runs, a shell execute waits in the queue; one sent on control
    after it runs first."""
    kc = kernel.kc
    execute_ok(kc, "import time\norder = []")
    running = kc.execute("time.sleep(1.5)")
    waiting = kc.execute("order.append('shell')")
    urgent = _ask(kc, "control", "execute_request",
                  {"code": "order.append('control')", "silent": False, "store_history": False,
                   "user_expressions": {}, "allow_stdin": False})
    assert get_reply(kc, urgent, channel="control", timeout=30)["content"]["status"] == "ok"
    for msg_id in (running, waiting):
        assert get_reply(kc, msg_id, timeout=30)["content"]["status"] == "ok"
    assert evaluate(kc, "order") == "['control', 'shell']"


@relaykernel_only
def test_unknown_request_types_get_an_error_reply(kernel):
    kc = kernel.kc
    for channel in ("shell", "control"):
        msg_id = _ask(kc, channel, "no_such_request", {"x": 1})
        reply = get_reply(kc, msg_id, channel=channel, timeout=30)
        assert reply["msg_type"] == "no_such_reply"
        content = reply["content"]
        assert content["status"] == "error" and content["ename"] == "UnknownMessageType"
        assert "no_such_request" in content["evalue"] and channel in content["evalue"]
        iopub = collect_iopub_until_idle(kc, msg_id, timeout=30)
        assert [m["content"]["execution_state"] for m in iopub if m["msg_type"] == "status"] == ["busy", "idle"]
    # a non-request message of an unknown type gets no reply and costs nothing
    _ask(kc, "control", "no_such_thing")
    assert evaluate(kc, "6 * 7") == "42"
