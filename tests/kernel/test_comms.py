"""The Communication Framework (comms) against a real kernel, at the protocol level.

The test client plays the frontend.  The cells follow the user-facing API of
the seed document (``Comm``, ``CommManager``, ``register_target``, ``on_msg``,
``on_close``...), importing ``Comm`` from ``relaykernel.comm`` (or from
``ipykernel.comm`` when RELAYKERNEL_TEST_KERNEL=ipykernel) and taking the
manager from ``get_ipython().kernel.comm_manager``.

Everything here also passes against ipykernel (RELAYKERNEL_TEST_KERNEL=ipykernel)
except ``test_comm_info_answered_while_a_cell_runs`` (ipykernel queues the
request behind the running cell), which is relaykernel-only.
"""

from __future__ import annotations

import ast
import os
import time

import pytest

from tests.kernel.comm_helpers import (
    ECHO_TARGET,
    PRELUDE,
    comm_close,
    comm_info,
    comm_msg,
    comm_open,
    comms_of,
    handled,
    new_comm_id,
    only,
    send_shell,
)
from tests.kernel.helpers import (
    Deadline,
    _get,
    collect_iopub_until_idle,
    evaluate,
    execute_ok,
    get_reply,
    of_type,
    parent_id,
    relaykernel_only,
    stream_text,
)


def _open_echo(kc, comm_id: str | None = None) -> str:
    """Register the echo target (idempotent) and open a frontend comm to it."""
    execute_ok(kc, ECHO_TARGET)
    comm_id = comm_id or new_comm_id()
    iopub = handled(kc, comm_open(kc, comm_id, "echo"))
    assert not comms_of(iopub, "comm_close"), "the echo target refused the comm"
    return comm_id


# ----------------------------------------------------------- (1) frontend-opened
def test_frontend_opened_echo_comm(kernel):
    kc = kernel.kc
    comm_id = _open_echo(kc)
    assert comm_info(kc) == {comm_id: {"target_name": "echo"}}

    data = {"x": 1, "s": "héllo", "nested": {"list": [1, 2, 3], "none": None}}
    msg_id = comm_msg(kc, comm_id, data)
    iopub = handled(kc, msg_id)
    assert [m["msg_type"] for m in iopub] == ["status", "comm_msg", "status"]
    echo = iopub[1]
    assert echo["content"]["comm_id"] == comm_id
    assert echo["content"]["data"] == data
    assert all(parent_id(m) == msg_id for m in iopub)

    # and again: the comm stays usable
    msg_id = comm_msg(kc, comm_id, {"n": 2})
    echo = only(comms_of(handled(kc, msg_id), "comm_msg", comm_id))
    assert echo["content"]["data"] == {"n": 2}


def test_comm_module_hooks_point_at_the_kernel_manager(kernel):
    """Libraries (ipywidgets...) use ``comm.create_comm`` / ``comm.get_comm_manager``."""
    kc = kernel.kc
    _, iopub = execute_ok(kc, PRELUDE + (
        "import comm\n"
        "assert comm.get_comm_manager() is comm_manager\n"
        "c = comm.create_comm(target_name='via_create_comm', data={'a': 1})\n"
        "assert comm_manager.get_comm(c.comm_id) is c\n"
        "print(type(c).__module__.split('.')[0], c.comm_id)\n"))
    opened = only(comms_of(iopub, "comm_open"))
    assert opened["content"]["target_name"] == "via_create_comm"
    assert opened["content"]["data"] == {"a": 1}
    out = stream_text(iopub).split()
    assert out[1] == opened["content"]["comm_id"]
    assert comm_info(kc, "via_create_comm") == {out[1]: {"target_name": "via_create_comm"}}


# ------------------------------------------------------------- (2) kernel-opened
KERNEL_COMM = PRELUDE + """
comm = Comm(target_name='my_widget', data={'hello': 'world'}, metadata={'m': 1},
            buffers=[b'open-buf'])

comm.send({'action': 'update', 'value': 42, 'timestamp': '2023-01-01T00:00:00Z'})
comm.send({'action': 'with-buffers'}, buffers=[b'\\x00\\x01\\x02', memoryview(b'xyz')])

def handle_message(msg):
    data = msg['content']['data']
    print(f"Received: {data}")
    comm.send({'action': 'echo', 'original': data})

comm.on_msg(handle_message)
"""


def test_kernel_opened_comm(kernel):
    kc = kernel.kc
    reply, iopub = execute_ok(kc, KERNEL_COMM)
    exec_id = parent_id(reply)
    opened = only(comms_of(iopub, "comm_open"))
    content = opened["content"]
    comm_id = content["comm_id"]
    assert content["target_name"] == "my_widget"
    assert content["data"] == {"hello": "world"}
    assert opened["metadata"] == {"m": 1}
    assert [bytes(b) for b in opened["buffers"]] == [b"open-buf"]
    assert parent_id(opened) == exec_id

    sent = comms_of(iopub, "comm_msg", comm_id)
    assert [m["content"]["data"] for m in sent] == [
        {"action": "update", "value": 42, "timestamp": "2023-01-01T00:00:00Z"},
        {"action": "with-buffers"},
    ]
    assert [bytes(b) for b in sent[1]["buffers"]] == [b"\x00\x01\x02", b"xyz"]
    # comm_open comes before the comm's messages
    assert iopub.index(opened) < iopub.index(sent[0])
    assert all(parent_id(m) == exec_id for m in sent)

    assert comm_info(kc) == {comm_id: {"target_name": "my_widget"}}
    assert evaluate(kc, "comm.comm_id") == repr(comm_id)
    assert evaluate(kc, "comm.target_name") == "'my_widget'"
    assert evaluate(kc, "comm.kernel is get_ipython().kernel") == "True"

    # the frontend talks back: on_msg runs, its print is output of the comm_msg
    msg_id = comm_msg(kc, comm_id, {"action": "set_value", "value": 7})
    iopub = handled(kc, msg_id)
    assert stream_text(iopub) == "Received: {'action': 'set_value', 'value': 7}\n"
    assert all(parent_id(m) == msg_id for m in of_type(iopub, "stream"))
    echo = only(comms_of(iopub, "comm_msg", comm_id))
    assert echo["content"]["data"] == {"action": "echo",
                                       "original": {"action": "set_value", "value": 7}}


# ----------------------------------------------------------------- (3) on_close
def test_frontend_close_runs_kernel_on_close(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(kc, KERNEL_COMM + (
        "comm.on_close(lambda msg: print('closed by frontend:', msg['content']['data']))\n"))
    comm_id = only(comms_of(iopub, "comm_open"))["content"]["comm_id"]

    msg_id = comm_close(kc, comm_id, {"reason": "bye"})
    iopub = handled(kc, msg_id)
    assert stream_text(iopub) == "closed by frontend: {'reason': 'bye'}\n"
    assert all(parent_id(m) == msg_id for m in of_type(iopub, "stream"))
    # the kernel does not answer a close with a close
    assert not comms_of(iopub, "comm_close")

    assert evaluate(kc, f"{comm_id!r} in comm_manager.comms") == "False"
    assert evaluate(kc, f"comm_manager.get_comm({comm_id!r}) is None") == "True"
    assert comm_info(kc) == {}

    # closing the (already closed) comm from the kernel now sends nothing
    _, iopub = execute_ok(kc, "comm.close({'late': True})")
    assert not comms_of(iopub, "comm_close")


def test_frontend_close_of_frontend_opened_comm(kernel):
    kc = kernel.kc
    comm_id = _open_echo(kc)
    msg_id = comm_close(kc, comm_id)
    iopub = handled(kc, msg_id)
    assert stream_text(iopub) == f"echo closed {comm_id}\n"
    assert not comms_of(iopub, "comm_close")
    assert comm_info(kc) == {}
    assert evaluate(kc, "len(comm_manager.comms)") == "0"


def test_kernel_close_sends_data_once(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(kc, KERNEL_COMM)
    comm_id = only(comms_of(iopub, "comm_open"))["content"]["comm_id"]

    reply, iopub = execute_ok(kc, "comm.close({'action': 'cleanup'})\n"
                                  "comm.close({'action': 'again'})\n")
    closed = only(comms_of(iopub, "comm_close"))
    assert closed["content"]["comm_id"] == comm_id
    assert closed["content"]["data"] == {"action": "cleanup"}
    assert parent_id(closed) == parent_id(reply)

    # idempotent in a later cell too
    _, iopub = execute_ok(kc, "comm.close()")
    assert not comms_of(iopub, "comm_close")
    assert evaluate(kc, f"{comm_id!r} in comm_manager.comms") == "False"
    assert comm_info(kc) == {}


# ---------------------------------------------------------------- (4) comm_info
def test_comm_info_lists_exactly_the_open_comms(kernel):
    kc = kernel.kc
    assert comm_info(kc) == {}
    execute_ok(kc, PRELUDE + "comm_manager.register_target('alpha', lambda c, m: None)\n")
    a1, a2 = new_comm_id(), new_comm_id()
    for cid in (a1, a2):
        iopub = handled(kc, comm_open(kc, cid, "alpha"))
        assert not comms_of(iopub, "comm_close")
    _, iopub = execute_ok(kc, PRELUDE + "b1 = Comm(target_name='beta')\n"
                                        "g1 = Comm(target_name='gamma')\n")
    b1, g1 = (m["content"]["comm_id"] for m in comms_of(iopub, "comm_open"))

    assert comm_info(kc) == {a1: {"target_name": "alpha"}, a2: {"target_name": "alpha"},
                             b1: {"target_name": "beta"}, g1: {"target_name": "gamma"}}
    assert comm_info(kc, "alpha") == {a1: {"target_name": "alpha"},
                                      a2: {"target_name": "alpha"}}
    assert comm_info(kc, "beta") == {b1: {"target_name": "beta"}}
    assert comm_info(kc, "no-such-target") == {}

    handled(kc, comm_close(kc, a1))
    execute_ok(kc, "g1.close()")
    assert comm_info(kc) == {a2: {"target_name": "alpha"}, b1: {"target_name": "beta"}}
    assert comm_info(kc, "alpha") == {a2: {"target_name": "alpha"}}
    assert comm_info(kc, "gamma") == {}


@relaykernel_only  # ipykernel queues comm_info_request on shell behind the running cell
def test_comm_info_answered_while_a_cell_runs(kernel, tmp_path):
    kc = kernel.kc
    comm_id = _open_echo(kc)
    release = tmp_path / "release"
    # the cell runs until the test has its comm_info_reply (or 30 s, so a kernel that
    # queues comm_info behind it still ends the test)
    exec_id = kc.execute(f"import os, time\nend = time.monotonic() + 30\n"
                         f"while not os.path.exists({str(release)!r}) and time.monotonic() < end:\n"
                         f"    time.sleep(0.01)\n")
    # wait until the cell is really running
    deadline = Deadline(15)
    while True:
        msg = _get(kc.get_iopub_msg, deadline)
        assert not deadline.expired(), "the cell never started"
        if msg is not None and parent_id(msg) == exec_id and msg["msg_type"] == "execute_input":
            break
    info_id = kc.comm_info()
    deadline = Deadline(40)
    while True:  # the first of the two replies
        msg = _get(kc.get_shell_msg, deadline)
        assert not deadline.expired(), "neither reply came"
        if msg is not None and parent_id(msg) in (info_id, exec_id):
            break
    release.touch()
    assert parent_id(msg) == info_id, "comm_info_reply waited for the running cell"
    assert msg["content"]["comms"] == {comm_id: {"target_name": "echo"}}
    exec_reply = get_reply(kc, exec_id, timeout=15)
    assert exec_reply["content"]["status"] == "ok"
    collect_iopub_until_idle(kc, exec_id)


# --------------------------------------------------------- (5) unknown target
def test_open_for_unregistered_target_is_closed(kernel):
    kc = kernel.kc
    comm_id = new_comm_id()
    msg_id = comm_open(kc, comm_id, "nobody-listens-here")
    iopub = handled(kc, msg_id)
    closed = only(comms_of(iopub, "comm_close"))
    assert closed["content"]["comm_id"] == comm_id
    assert parent_id(closed) == msg_id
    assert comm_info(kc) == {}
    assert evaluate(kc, "len(get_ipython().kernel.comm_manager.comms)") == "0"
    # messages to it afterwards are harmless
    handled(kc, comm_msg(kc, comm_id, {"x": 1}))
    execute_ok(kc, "1 + 1")


def test_target_that_raises_on_open_closes_the_comm(kernel):
    kc = kernel.kc
    execute_ok(kc, PRELUDE + (
        "def bad_target(comm, msg):\n"
        "    raise RuntimeError('target-broke')\n"
        "comm_manager.register_target('bad', bad_target)\n"))
    comm_id = new_comm_id()
    msg_id = comm_open(kc, comm_id, "bad")
    iopub = handled(kc, msg_id)
    assert only(comms_of(iopub, "comm_close"))["content"]["comm_id"] == comm_id
    err = stream_text(iopub, "stderr")
    assert "RuntimeError" in err and "target-broke" in err, err
    assert comm_info(kc) == {}


# --------------------------------------------------------- (6) unknown comm_id
def test_comm_msg_for_unknown_comm_id(kernel):
    kc = kernel.kc
    for msg_type in ("comm_msg", "comm_close"):
        content = {"comm_id": new_comm_id(), "data": {"x": 1}}
        msg_id = send_shell(kc, msg_type, content)
        iopub = handled(kc, msg_id)
        assert not comms_of(iopub, "comm_msg") and not comms_of(iopub, "comm_close")
    reply, _ = execute_ok(kc, "40 + 2")
    assert reply["content"]["status"] == "ok"
    assert evaluate(kc, "40 + 2") == "42"
    assert comm_info(kc) == {}
    # a real comm still works after that
    comm_id = _open_echo(kc)
    echo = only(comms_of(handled(kc, comm_msg(kc, comm_id, {"ok": 1})), "comm_msg"))
    assert echo["content"]["data"] == {"ok": 1}


# --------------------------------------------------------- (7) failing callback
def test_failing_callback_traceback_goes_to_stderr_of_the_message(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(kc, PRELUDE + (
        "c = Comm(target_name='fragile')\n"
        "def on_msg(msg):\n"
        "    data = msg['content']['data']\n"
        "    if data.get('fail'):\n"
        "        raise ValueError('callback-exploded-' + str(data['n']))\n"
        "    c.send({'ok': data['n']})\n"
        "c.on_msg(on_msg)\n"
        "def on_close(msg):\n"
        "    raise KeyError('close-exploded')\n"
        "c.on_close(on_close)\n"))
    comm_id = only(comms_of(iopub, "comm_open"))["content"]["comm_id"]

    msg_id = comm_msg(kc, comm_id, {"fail": True, "n": 1})
    iopub = handled(kc, msg_id)
    stderr = [m for m in of_type(iopub, "stream") if m["content"]["name"] == "stderr"]
    assert stderr, [m["msg_type"] for m in iopub]
    assert all(parent_id(m) == msg_id for m in stderr)
    err = stream_text(iopub, "stderr")
    assert "Traceback" in err and "ValueError: callback-exploded-1" in err, err
    assert not comms_of(iopub, "comm_msg")
    assert not comms_of(iopub, "comm_close"), "a failing callback must not close the comm"

    # the comm still works
    msg_id = comm_msg(kc, comm_id, {"n": 2})
    iopub = handled(kc, msg_id)
    assert only(comms_of(iopub, "comm_msg", comm_id))["content"]["data"] == {"ok": 2}
    assert stream_text(iopub, "stderr") == ""
    assert comm_info(kc) == {comm_id: {"target_name": "fragile"}}

    # a failing on_close: traceback to stderr, the comm is still gone
    msg_id = comm_close(kc, comm_id)
    iopub = handled(kc, msg_id)
    err = stream_text(iopub, "stderr")
    assert "KeyError" in err and "close-exploded" in err, err
    assert comm_info(kc) == {}
    assert evaluate(kc, f"{comm_id!r} in comm_manager.comms") == "False"


def test_open_data_and_buffers_reach_the_target_and_close_from_on_msg(kernel):
    kc = kernel.kc
    execute_ok(kc, PRELUDE + (
        "def target(comm, open_msg):\n"
        "    print('open data', open_msg['content']['data'],\n"
        "          [bytes(b) for b in open_msg['buffers']])\n"
        "    comm.on_msg(lambda msg: comm.close({'closing': msg['content']['data']['why']}))\n"
        "comm_manager.register_target('closer', target)\n"))
    comm_id = new_comm_id()
    iopub = handled(kc, comm_open(kc, comm_id, "closer", data={"a": 1}, buffers=[b"xy", b""]))
    assert stream_text(iopub) == "open data {'a': 1} [b'xy', b'']\n"
    assert comm_info(kc) == {comm_id: {"target_name": "closer"}}
    msg_id = comm_msg(kc, comm_id, {"why": "asked"})
    iopub = handled(kc, msg_id)
    closed = only(comms_of(iopub, "comm_close", comm_id))
    assert closed["content"]["data"] == {"closing": "asked"}
    assert parent_id(closed) == msg_id
    assert comm_info(kc) == {}


def test_comm_messages_from_a_background_thread(kernel):
    """A thread may keep sending (e.g. progress) after its cell finished: nothing is lost."""
    kc = kernel.kc
    n = 300
    _, iopub = execute_ok(kc, PRELUDE + (
        "import threading, time\n"
        "progress = Comm(target_name='progress')\n"
        "def run():\n"
        f"    for i in range({n}):\n"
        "        progress.send({'i': i})\n"
        "        if i % 50 == 0:\n"
        "            time.sleep(0.01)\n"
        "    progress.close({'done': True})\n"
        "threading.Thread(target=run).start()\n"))
    comm_id = only(comms_of(iopub, "comm_open"))["content"]["comm_id"]
    seen = [m["content"]["data"]["i"] for m in comms_of(iopub, "comm_msg", comm_id)]
    deadline = Deadline(30)
    closed = None
    while closed is None:
        msg = _get(kc.get_iopub_msg, deadline)
        assert not deadline.expired(), f"only {len(seen)} of {n} messages, no close"
        if msg is None or msg["content"].get("comm_id") != comm_id:
            continue
        if msg["msg_type"] == "comm_msg":
            seen.append(msg["content"]["data"]["i"])
        elif msg["msg_type"] == "comm_close":
            closed = msg
    assert seen == list(range(n))
    assert closed["content"]["data"] == {"done": True}
    assert comm_info(kc) == {}
    execute_ok(kc, "1")


def test_malformed_comm_open_is_still_answered_with_busy_idle(kernel):
    kc = kernel.kc
    msg_id = send_shell(kc, "comm_open", {"comm_id": new_comm_id(), "data": {}})  # no target
    handled(kc, msg_id, timeout=10)
    assert comm_info(kc) == {}
    execute_ok(kc, "1")


# ---------------------------------------------- (8) seed patterns & management
SIMPLE_SLIDER = PRELUDE + """
import threading
import time

class SimpleSlider:
    \"\"\"Example interactive widget using comms.\"\"\"

    def __init__(self, min_val=0, max_val=100, initial_val=50):
        self.min_val = min_val
        self.max_val = max_val
        self.value = initial_val
        self.observers = []

        # Create comm for frontend communication
        self.comm = Comm(target_name='simple_slider')
        self.comm.on_msg(self._handle_frontend_msg)

        # Send initial configuration
        self.comm.send({
            'action': 'create',
            'config': {
                'min': self.min_val,
                'max': self.max_val,
                'value': self.value
            }
        })

    def _handle_frontend_msg(self, msg):
        \"\"\"Handle messages from frontend.\"\"\"
        data = msg['content']['data']

        if data.get('action') == 'value_change':
            new_value = data.get('value')
            if self.min_val <= new_value <= self.max_val:
                old_value = self.value
                self.value = new_value

                # Notify observers
                for callback in self.observers:
                    callback(old_value, new_value)

    def observe(self, callback):
        \"\"\"Register callback for value changes.\"\"\"
        self.observers.append(callback)

    def set_value(self, value):
        \"\"\"Programmatically set value.\"\"\"
        if self.min_val <= value <= self.max_val:
            self.value = value
            self.comm.send({
                'action': 'update_value',
                'value': value
            })

# Usage
slider = SimpleSlider(0, 255, 128)

def on_value_change(old_val, new_val):
    print(f"Slider changed from {old_val} to {new_val}")

slider.observe(on_value_change)
"""


def test_simple_slider_seed_pattern(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(kc, SIMPLE_SLIDER)
    opened = only(comms_of(iopub, "comm_open"))
    assert opened["content"]["target_name"] == "simple_slider"
    comm_id = opened["content"]["comm_id"]
    create = only(comms_of(iopub, "comm_msg", comm_id))
    assert create["content"]["data"] == {"action": "create",
                                         "config": {"min": 0, "max": 255, "value": 128}}

    msg_id = comm_msg(kc, comm_id, {"action": "value_change", "value": 200})
    iopub = handled(kc, msg_id)
    assert stream_text(iopub) == "Slider changed from 128 to 200\n"
    assert all(parent_id(m) == msg_id for m in of_type(iopub, "stream"))
    assert evaluate(kc, "slider.value") == "200"

    # out of range: ignored, no observer call
    iopub = handled(kc, comm_msg(kc, comm_id, {"action": "value_change", "value": 999}))
    assert stream_text(iopub) == ""
    assert evaluate(kc, "slider.value") == "200"

    _, iopub = execute_ok(kc, "slider.set_value(10)\nslider.set_value(1000)")
    update = only(comms_of(iopub, "comm_msg", comm_id))
    assert update["content"]["data"] == {"action": "update_value", "value": 10}


WIDGET_TARGET_SEED = PRELUDE + """
def handle_widget_comm(comm, open_msg):
    \"\"\"Handle new widget comm connections.\"\"\"
    print(f"New comm opened: {comm.comm_id}")

    def on_widget_msg(msg):
        data = msg['content']['data']

        if data.get('action') == 'get_state':
            comm.send({
                'action': 'state',
                'state': {'value': 100, 'enabled': True}
            })
        elif data.get('action') == 'set_value':
            new_value = data.get('value', 0)
            print(f"Widget value updated to: {new_value}")
            comm.send({
                'action': 'value_updated',
                'value': new_value
            })

    comm.on_msg(on_widget_msg)

    comm.send({
        'action': 'initialized',
        'widget_id': comm.comm_id
    })

comm_manager.register_target('my_widget', handle_widget_comm)
"""


def test_target_registration_seed_and_unregister(kernel):
    kc = kernel.kc
    execute_ok(kc, WIDGET_TARGET_SEED)
    comm_id = new_comm_id()
    msg_id = comm_open(kc, comm_id, "my_widget", data={"from": "frontend"})
    iopub = handled(kc, msg_id)
    assert stream_text(iopub) == f"New comm opened: {comm_id}\n"
    init = only(comms_of(iopub, "comm_msg", comm_id))
    assert init["content"]["data"] == {"action": "initialized", "widget_id": comm_id}
    assert parent_id(init) == msg_id
    assert not comms_of(iopub, "comm_close")

    iopub = handled(kc, comm_msg(kc, comm_id, {"action": "get_state"}))
    assert only(comms_of(iopub, "comm_msg", comm_id))["content"]["data"] == {
        "action": "state", "state": {"value": 100, "enabled": True}}
    iopub = handled(kc, comm_msg(kc, comm_id, {"action": "set_value", "value": 5}))
    assert stream_text(iopub) == "Widget value updated to: 5\n"
    assert only(comms_of(iopub, "comm_msg", comm_id))["content"]["data"] == {
        "action": "value_updated", "value": 5}

    assert evaluate(kc, "'my_widget' in comm_manager.targets") == "True"
    execute_ok(kc, "comm_manager.unregister_target('my_widget', handle_widget_comm)")
    assert evaluate(kc, "'my_widget' in comm_manager.targets") == "False"
    # the comm opened before stays open
    assert comm_info(kc) == {comm_id: {"target_name": "my_widget"}}
    iopub = handled(kc, comm_msg(kc, comm_id, {"action": "get_state"}))
    assert comms_of(iopub, "comm_msg", comm_id)


def test_open_after_unregister_target_is_closed(kernel):
    kc = kernel.kc
    execute_ok(kc, WIDGET_TARGET_SEED)
    execute_ok(kc, "comm_manager.unregister_target('my_widget', handle_widget_comm)")
    comm_id = new_comm_id()
    iopub = handled(kc, comm_open(kc, comm_id, "my_widget"))
    assert only(comms_of(iopub, "comm_close"))["content"]["comm_id"] == comm_id
    assert "New comm opened" not in stream_text(iopub)
    assert comm_info(kc) == {}
    # registering it again makes it work again
    execute_ok(kc, "comm_manager.register_target('my_widget', handle_widget_comm)")
    comm_id = new_comm_id()
    iopub = handled(kc, comm_open(kc, comm_id, "my_widget"))
    assert not comms_of(iopub, "comm_close")
    assert comm_info(kc) == {comm_id: {"target_name": "my_widget"}}


def test_comm_cleanup_and_management_seed(kernel):
    kc = kernel.kc
    front = _open_echo(kc)
    _, iopub = execute_ok(kc, PRELUDE + "k1 = Comm(target_name='my_widget')\n"
                                        "k2 = Comm(target_name='other')\n")
    k1, k2 = (m["content"]["comm_id"] for m in comms_of(iopub, "comm_open"))

    _, iopub = execute_ok(kc, (
        "active_comms = list(comm_manager.comms.keys())\n"
        "print(f'Active comms: {active_comms}')\n"))
    listed = ast.literal_eval(stream_text(iopub).split(": ", 1)[1])
    assert sorted(listed) == sorted([front, k1, k2])

    assert evaluate(kc, f"comm_manager.get_comm({k1!r}).target_name") == "'my_widget'"
    assert evaluate(kc, f"comm_manager.get_comm({front!r}).target_name") == "'echo'"
    assert evaluate(kc, f"comm_manager.get_comm({front!r}).comm_id") == repr(front)
    assert evaluate(kc, "comm_manager.get_comm('no-such-comm') is None") == "True"

    reply, iopub = execute_ok(kc, (
        "for comm_id, comm in list(comm_manager.comms.items()):\n"
        "    comm.close({'action': 'shutdown'})\n"))
    closes = comms_of(iopub, "comm_close")
    assert sorted(m["content"]["comm_id"] for m in closes) == sorted([front, k1, k2])
    assert all(m["content"]["data"] == {"action": "shutdown"} for m in closes)
    assert all(parent_id(m) == parent_id(reply) for m in closes)
    assert evaluate(kc, "list(comm_manager.comms.keys())") == "[]"
    assert comm_info(kc) == {}

    # a closed comm's id is unknown now: messages to it change nothing
    iopub = handled(kc, comm_msg(kc, front, {"x": 1}))
    assert not comms_of(iopub, "comm_msg")


# ------------------------------------------------------------ (9) big buffers
def test_50mb_binary_buffer_round_trip(kernel):
    kc = kernel.kc
    comm_id = _open_echo(kc)
    payload = os.urandom(1 << 20) * 50  # 50 MiB, not trivially compressible per MiB
    payload = payload[:-7] + b"the-end"
    msg_id = comm_msg(kc, comm_id, {"kind": "blob", "size": len(payload)}, buffers=[payload])
    iopub = handled(kc, msg_id, timeout=90)
    echo = only(comms_of(iopub, "comm_msg", comm_id))
    assert echo["content"]["data"] == {"kind": "blob", "size": len(payload)}
    assert len(echo["buffers"]) == 1
    back = echo["buffers"][0]
    assert len(back) == len(payload)
    assert bytes(back) == payload

    # several buffers, including an empty one, keep their order
    bufs = [b"", b"a", os.urandom(1000), b"z" * 70_000]
    echo = only(comms_of(handled(kc, comm_msg(kc, comm_id, {"k": 2}, buffers=bufs)),
                         "comm_msg", comm_id))
    assert [bytes(b) for b in echo["buffers"]] == bufs


# --------------------------------------------------------- (10) many messages
@pytest.mark.timeout(240)
def test_20000_pipelined_echoes(kernel):
    kc = kernel.kc
    comm_id = _open_echo(kc)
    total, window = 20_000, 300
    sent = received = 0
    statuses = 0
    deadline = Deadline(120)
    t0 = time.monotonic()
    while received < total:
        while sent < total and sent - received < window:
            comm_msg(kc, comm_id, {"seq": sent})
            sent += 1
        msg = _get(kc.get_iopub_msg, deadline)
        if msg is None:
            assert not deadline.expired(), (
                f"only {received} of {total} echoes within 120 s ({sent} sent)")
            continue
        if msg["msg_type"] == "status":
            statuses += 1
            continue
        assert msg["msg_type"] == "comm_msg", msg["msg_type"]
        assert msg["content"]["comm_id"] == comm_id
        assert msg["content"]["data"] == {"seq": received}, "echo out of order or lost"
        received += 1
    elapsed = time.monotonic() - t0
    print(f"{total} echoes in {elapsed:.1f}s ({total / elapsed:.0f}/s)")
    # the kernel is still healthy and nothing is left over
    assert evaluate(kc, "1 + 1") == "2"
    assert comm_info(kc) == {comm_id: {"target_name": "echo"}}
