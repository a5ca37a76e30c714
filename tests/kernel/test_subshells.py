"""Kernel subshells (JEP 91, protocol 5.5): requests that run while a cell runs.

The protocol tests run against ipykernel 7 too (RELAYKERNEL_TEST_KERNEL=ipykernel);
those about the overlap policy, crashes and restarts are relaykernel's own.
Every wait is bounded.
"""

from __future__ import annotations

import time
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient

from tests.kernel import crash_helpers
from tests.kernel.comm_helpers import PRELUDE, new_comm_id
from tests.kernel.crash_helpers import install_spec
from tests.kernel.helpers import (
    IS_IPYKERNEL,
    Deadline,
    collect_iopub_until_idle,
    evaluate,
    execute_ok,
    get_reply,
    parent_id,
    relaykernel_only,
    stream_text,
)
from tests.kernel.test_snapshots import _fresh_snapshot

relay = crash_helpers.relay


def control(kc: BlockingKernelClient, msg_type: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    msg = kc.session.msg(msg_type, content or {})
    kc.control_channel.send(msg)
    return get_reply(kc, msg["header"]["msg_id"], channel="control")["content"]


def create(kc: BlockingKernelClient) -> str:
    reply = control(kc, "create_subshell_request")
    assert reply["status"] == "ok", reply
    return str(reply["subshell_id"])


def send(kc: BlockingKernelClient, msg_type: str, content: dict[str, Any], subshell_id: str | None) -> str:
    msg = kc.session.msg(msg_type, content)
    if subshell_id is not None:
        msg["header"]["subshell_id"] = subshell_id
    kc.shell_channel.send(msg)
    return str(msg["header"]["msg_id"])


def run(kc: BlockingKernelClient, code: str, subshell_id: str | None, **content: Any) -> str:
    return send(kc, "execute_request", {"code": code, "silent": False, "store_history": True,
                                        "user_expressions": {}, "allow_stdin": False, **content}, subshell_id)


def replies(kc: BlockingKernelClient, msg_ids: list[str], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """The shell replies to ``msg_ids``, whatever order they come in, each with its arrival time."""
    deadline = Deadline(timeout)
    got: dict[str, dict[str, Any]] = {}
    while set(msg_ids) - set(got):
        msg = kc.get_shell_msg(timeout=max(0.05, deadline.remaining()))
        if parent_id(msg) in msg_ids:
            msg["arrived"] = time.monotonic()
            got[parent_id(msg)] = msg
        assert not deadline.expired(), f"no reply to {set(msg_ids) - set(got)}"
    return got


def iopub_of(kc: BlockingKernelClient, msg_ids: list[str], timeout: float = 30.0) -> dict[str, list[dict[str, Any]]]:
    """Iopub messages of each of ``msg_ids``, up to the idle of every one (the last idle:
    a request's busy may be said again after another's idle)."""
    deadline = Deadline(timeout)
    got: dict[str, list[dict[str, Any]]] = {m: [] for m in msg_ids}
    idle: set[str] = set()
    while idle != set(msg_ids):
        msg = kc.get_iopub_msg(timeout=max(0.05, deadline.remaining()))
        owner = parent_id(msg)
        if owner in got:
            got[owner].append(msg)
            if msg["msg_type"] == "status":
                (idle.add if msg["content"]["execution_state"] == "idle" else idle.discard)(owner)
        assert not deadline.expired(), f"no idle for {set(msg_ids) - idle}"
    return got


def first_iopub(kc: BlockingKernelClient, wanted: Any, timeout: float = 20.0) -> dict[str, Any]:
    """The next iopub message for which ``wanted(msg)`` is true (others are dropped)."""
    deadline = Deadline(timeout)
    while True:
        msg = kc.get_iopub_msg(timeout=deadline.remaining())  # Empty once the deadline passed
        if wanted(msg):
            return msg


def started(kc: BlockingKernelClient, msg_id: str) -> None:
    """Until the cell ``msg_id`` runs (its execute_input)."""
    first_iopub(kc, lambda m: m["msg_type"] == "execute_input" and parent_id(m) == msg_id)


def test_create_list_delete_round_trip(kernel):
    kc = kernel.kc
    info = kc.kernel_info(reply=True, timeout=10)["content"]
    assert "kernel subshells" in info["supported_features"]
    if not IS_IPYKERNEL:  # ipykernel 7.4 has subshells but still says 5.3
        assert tuple(int(p) for p in info["protocol_version"].split(".")[:2]) >= (5, 5)
    before = control(kc, "list_subshell_request")["subshell_id"]
    a, b = create(kc), create(kc)
    assert a != b
    assert set(control(kc, "list_subshell_request")["subshell_id"]) == {*before, a, b}
    assert control(kc, "delete_subshell_request", {"subshell_id": a})["status"] == "ok"
    assert set(control(kc, "list_subshell_request")["subshell_id"]) == {*before, b}
    assert control(kc, "delete_subshell_request", {"subshell_id": a})["status"] == "error"


def test_a_request_for_an_unknown_subshell_gets_an_error_reply(kernel):
    kc = kernel.kc
    msg_id = run(kc, "1", "no-such-subshell")
    reply = get_reply(kc, msg_id, timeout=10)["content"]
    assert reply["status"] == "error"
    assert "no-such-subshell" in reply["evalue"]
    execute_ok(kc, "x = 1")  # and the kernel goes on


def test_a_subshell_runs_while_the_main_cell_runs(kernel):
    kc = kernel.kc
    sub = create(kc)
    execute_ok(kc, "import threading, time\nrelease = threading.Event()")
    main = run(kc, "print('main'); release.wait(30); time.sleep(0.5); print('main done')", None)
    side = run(kc, "print('sub'); release.set(); 6 * 7", sub)
    got = replies(kc, [main, side])
    assert got[main]["content"]["status"] == got[side]["content"]["status"] == "ok"
    assert got[side]["arrived"] <= got[main]["arrived"]
    iopub = iopub_of(kc, [main, side])
    assert stream_text(iopub[main]) == "main\nmain done\n"  # only what the main cell printed
    sub_iopub = iopub[side]
    assert stream_text(sub_iopub) == "sub\n"
    results = [m for m in sub_iopub if m["msg_type"] == "execute_result"]
    assert results and results[0]["content"]["data"]["text/plain"] == "42"
    assert results[0]["parent_header"].get("subshell_id") == sub


def test_input_in_a_subshell_asks_the_client_that_sent_it(kernel):
    kc = kernel.kc
    sub = create(kc)
    execute_ok(kc, "import threading\nrelease = threading.Event()")
    main = run(kc, "release.wait(30)", None)
    side = run(kc, "answer = input('name? '); release.set(); print('got', answer)", sub, allow_stdin=True)
    prompt = kc.get_stdin_msg(timeout=20)
    assert prompt["msg_type"] == "input_request"
    assert prompt["content"]["prompt"] == "name? "
    assert parent_id(prompt) == side
    kc.input("ada")
    got = replies(kc, [main, side])
    assert got[side]["content"]["status"] == "ok", got[side]["content"]
    assert "got ada" in stream_text(collect_iopub_until_idle(kc, side))


def test_stop_on_error_aborts_only_the_failing_subshells_queue(kernel):
    kc = kernel.kc
    sub = create(kc)
    execute_ok(kc, "import threading\nrelease = threading.Event()")
    main = run(kc, "release.wait(30)", None)
    fail = run(kc, "1/0", sub)
    after_fail = run(kc, "print('never')", sub)
    main_next = run(kc, "print('main goes on')", None)
    release = run(kc, "release.set()", create(kc))
    got = replies(kc, [main, fail, after_fail, main_next, release])
    assert got[fail]["content"]["status"] == "error"
    assert got[after_fail]["content"]["status"] == "aborted"
    assert got[main_next]["content"]["status"] == "ok"


@relaykernel_only  # ipykernel 7.4's delete_subshell_reply waits for the busy subshell's cell to end
def test_deleting_a_busy_subshell_lets_its_cell_finish(kernel):
    kc = kernel.kc
    sub = create(kc)
    execute_ok(kc, "import threading\nrelease = threading.Event()\nstarted = threading.Event()")
    busy = run(kc, "started.set(); release.wait(30); 'finished'", sub)
    assert evaluate(kc, "started.wait(20)") == "True"
    assert control(kc, "delete_subshell_request", {"subshell_id": sub})["status"] == "ok"
    assert sub not in control(kc, "list_subshell_request")["subshell_id"]
    # both replies at once: the released cell may answer before the releasing one, and
    # waiting for one reply drops the others (get_reply)
    release = run(kc, "release.set()", None)
    got = replies(kc, [busy, release])
    assert got[release]["content"]["status"] == "ok"
    assert got[busy]["content"]["status"] == "ok"
    late = run(kc, "1", sub)
    assert replies(kc, [late])[late]["content"]["status"] == "error"


COMM_STOPS_LOOP = PRELUDE + """
import time
stop = False
def _stop_target(comm, open_msg):
    def _on_msg(msg):
        global stop
        stop = True
    comm.on_msg(_on_msg)
comm_manager.register_target('stopper', _stop_target)
"""


def test_a_comm_message_on_a_subshell_stops_a_running_loop(kernel):
    """The widget "stop" button: the cell's reply comes within a second of the handler."""
    kc = kernel.kc
    execute_ok(kc, COMM_STOPS_LOOP)
    comm_id = new_comm_id()
    opened = send(kc, "comm_open", {"comm_id": comm_id, "target_name": "stopper", "data": {}}, None)
    collect_iopub_until_idle(kc, opened)
    sub = create(kc)
    loop = run(kc, "t0 = time.monotonic()\nwhile not stop and time.monotonic() - t0 < 30:\n"
                   "    time.sleep(0.01)\nprint('stopped after', round(time.monotonic() - t0))", None)
    started(kc, loop)
    sent_at = time.monotonic()
    stop_msg = send(kc, "comm_msg", {"comm_id": comm_id, "data": {"stop": True}}, sub)
    first_iopub(kc, lambda m: m["msg_type"] == "status" and parent_id(m) == stop_msg
                and m["content"]["execution_state"] == "idle", timeout=30)
    handled_at = time.monotonic()
    reply = replies(kc, [loop])[loop]
    assert reply["content"]["status"] == "ok"
    assert reply["arrived"] - handled_at < 1.0
    assert handled_at - sent_at < 25  # not at the loop's own 30 s end


AWAIT_COMM = PRELUDE + """
import asyncio
answers = []
def _ask_target(comm, open_msg):
    global asker
    asker = comm
    comm.on_msg(lambda msg: answers.append(msg['content']['data']))
comm_manager.register_target('ask', _ask_target)
"""


def test_a_cell_awaiting_a_comm_reply_gets_it(kernel):
    """ipykernel 7 handles the main shell's comm messages while a cell awaits (issue 17, item 5)."""
    kc = kernel.kc
    execute_ok(kc, AWAIT_COMM)
    comm_id = new_comm_id()
    opened = send(kc, "comm_open", {"comm_id": comm_id, "target_name": "ask", "data": {}}, None)
    collect_iopub_until_idle(kc, opened)
    cell = run(kc, "asker.send({'question': 1})\n"
                   "for _ in range(200):\n"
                   "    if answers:\n        break\n"
                   "    await asyncio.sleep(0.05)\n"
                   "print('answer', answers)", None)
    first_iopub(kc, lambda m: m["msg_type"] == "comm_msg" and m["content"]["data"] == {"question": 1})
    send(kc, "comm_msg", {"comm_id": comm_id, "data": {"answer": 42}}, None)
    reply = replies(kc, [cell])[cell]
    assert reply["content"]["status"] == "ok"
    assert "answer [{'answer': 42}]" in stream_text(collect_iopub_until_idle(kc, cell))


def test_percent_subshell_shows_the_id_and_the_list(kernel):
    kc = kernel.kc
    sub = create(kc)
    msg_id = run(kc, "%subshell", sub)
    assert replies(kc, [msg_id])[msg_id]["content"]["status"] == "ok"
    text = stream_text(collect_iopub_until_idle(kc, msg_id))
    assert f"subshell id: {sub}" in text
    assert sub in text.split("subshell list:")[1]
    _, iopub = execute_ok(kc, "%subshell")
    assert "subshell id: None" in stream_text(iopub)


# ---------------------------------------------------------------- relaykernel only
@relaykernel_only
def test_short_requests_of_two_subshells_do_not_overlap(kernel):
    """A subshell's cell sent while a short main cell runs waits for it (flow.py's
    overlap_after), so the two never interleave on shared state."""
    kc = kernel.kc
    sub = create(kc)
    execute_ok(kc, "import time\nsteps = []")
    main = run(kc, "for i in range(5):\n    steps.append('main'); time.sleep(0.05)", None)
    side = run(kc, "for i in range(5):\n    steps.append('sub'); time.sleep(0.01)", sub)
    replies(kc, [main, side])
    assert evaluate(kc, "steps") == repr(["main"] * 5 + ["sub"] * 5)


@relaykernel_only
def test_a_subshell_starts_beside_a_long_cell_after_overlap_after(kernel):
    kc = kernel.kc
    sub = create(kc)
    execute_ok(kc, "import threading\nrelease = threading.Event()")
    main = run(kc, "release.wait(30)", None)
    started = time.monotonic()
    side = run(kc, "release.set()", sub)
    got = replies(kc, [main, side])
    assert got[side]["content"]["status"] == "ok"
    # it waited for the main cell to reach 1 s (Supervisor.subshell_overlap_after), not 30 s
    assert 0.5 < got[side]["arrived"] - started < 15


@relaykernel_only
def test_an_interrupt_reaches_a_subshell_cell(kernel):
    kc = kernel.kc
    sub = create(kc)
    side = run(kc, "import time\nwhile True:\n    sum(range(1000))", sub)
    started(kc, side)
    assert control(kc, "interrupt_request")["status"] == "ok"
    reply = replies(kc, [side])[side]["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    execute_ok(kc, "x = 1")


@relaykernel_only
def test_subshell_ids_survive_a_crash_and_a_restart(relay):
    h = relay.start(install_spec("relaykernel-provisioned"))
    kc = h.kc
    sub = create(kc)
    execute_ok(kc, "x = 6")
    # a crash while the subshell holds a queued request: it runs on the next worker
    crash = run(kc, "import time; time.sleep(0.3); import os; os._exit(3)", None)
    queued = run(kc, "print('sub ran')", sub)
    got = replies(kc, [crash, queued])
    assert got[crash]["content"]["ename"] == "WorkerDied"
    assert got[queued]["content"]["status"] == "ok", got[queued]["content"]
    assert sub in control(kc, "list_subshell_request")["subshell_id"]
    relay.track(h)

    h.km.restart_kernel()
    kc.wait_for_ready(timeout=30)
    assert sub in control(kc, "list_subshell_request")["subshell_id"]
    after = run(kc, "%subshell", sub)
    assert replies(kc, [after])[after]["content"]["status"] == "ok"
    assert f"subshell id: {sub}" in stream_text(collect_iopub_until_idle(kc, after))
    relay.track(h)


@relaykernel_only
def test_a_crash_after_subshell_requests_fails_only_the_crashed_cell(relay):
    """Subshell requests are not the main shell's: counting their DONEs as the main
    shell's once made recovery think the crashed cell had not started, and run it again
    on the snapshot, which crashed too."""
    h = relay.start(install_spec("relaykernel-provisioned"))
    kc = h.kc
    sub = create(kc)
    ids = [run(kc, f"y = {i}", sub) for i in range(3)]
    assert all(r["content"]["status"] == "ok" for r in replies(kc, ids).values())
    execute_ok(kc, "marker = 'kept'")
    _fresh_snapshot(kc)
    crash = run(kc, "import os; os._exit(1)", None)
    reply = replies(kc, [crash])[crash]["content"]
    assert reply["ename"] == "WorkerDied" and "exit code 1" in reply["evalue"], reply
    assert evaluate(kc, "marker") == "'kept'"  # rolled back to the snapshot, which runs on
    relay.track(h)


LORENZ_LIKE = """
%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
from ipywidgets import interactive

def plot(seed=0):
    fig = plt.figure(figsize=(3, 3))
    ax = fig.add_subplot()
    rng = np.random.RandomState(seed)
    for i in range(40):
        ax.plot(rng.randn(300).cumsum())
    plt.show()
"""


def _png(iopub: list[dict[str, Any]]) -> list[str]:
    return [m["content"]["data"]["image/png"] for m in iopub
            if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]]


@relaykernel_only
def test_an_interactive_plot_renders_the_same_while_the_main_shell_plots(kernel):
    """JupyterLab issue 19719: a widget callback on a subshell drawing with pyplot while
    a cell of the main shell draws too corrupts both figures under ipykernel 7.  Here a
    short main cell runs first and the callback after it (flow.py's overlap_after), so
    both figures come out as they do alone."""
    kc = kernel.kc
    execute_ok(kc, LORENZ_LIKE)
    _, alone_main = execute_ok(kc, "plot(3)")
    _, alone_widget = execute_ok(kc, "plot(5)")
    reference_main, reference_widget = _png(alone_main), _png(alone_widget)
    assert len(reference_main) == len(reference_widget) == 1
    _, iopub = execute_ok(kc, "w = interactive(plot, seed=(0, 10)); w")
    slider_id = next(m["content"]["comm_id"] for m in iopub if m["msg_type"] == "comm_open"
                     and m["content"]["data"]["state"].get("_model_name") == "IntSliderModel")
    sub = create(kc)
    for _ in range(3):
        execute_ok(kc, "w.children[0].value = 0")
        main = run(kc, "plot(3)", None)
        moved = send(kc, "comm_msg", {"comm_id": slider_id, "data": {
            "method": "update", "state": {"value": 5}, "buffer_paths": []}}, sub)
        got = iopub_of(kc, [main, moved])
        assert _png(got[main]) == reference_main
        assert _png(got[moved]) == reference_widget


@relaykernel_only  # ipykernel 7.4 hands the main shell's input() the subshell's reply (checked)
def test_two_open_prompts_each_get_their_own_reply(kernel):
    """input() waiting in the main shell and in a subshell at once: each input_reply
    reaches the prompt it answers (its parent), whatever order they come in."""
    kc = kernel.kc
    sub = create(kc)
    main = run(kc, "a = input('main? '); print('main got', a)", None, allow_stdin=True)
    first = kc.get_stdin_msg(timeout=20)
    side = run(kc, "b = input('sub? '); print('sub got', b)", sub, allow_stdin=True)
    second = kc.get_stdin_msg(timeout=20)
    prompts = {parent_id(first): first, parent_id(second): second}
    assert set(prompts) == {main, side}
    for msg_id, value in ((side, "from the subshell"), (main, "from the main shell")):
        reply = kc.session.msg("input_reply", {"value": value}, parent=prompts[msg_id]["header"])
        kc.stdin_channel.send(reply)
    got = replies(kc, [main, side])
    assert got[main]["content"]["status"] == got[side]["content"]["status"] == "ok"
    out = iopub_of(kc, [main, side])
    assert "main got from the main shell" in stream_text(out[main])
    assert "sub got from the subshell" in stream_text(out[side])
