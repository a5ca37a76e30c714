"""Worker crashes, as the frontend sees them: one error reply, a report, and a kernel that goes on.

relaykernel only.  Each test drives a real kernel through jupyter_client.  The
crash matrix kills the worker five ways (os._exit, a segfault, an external
SIGKILL, the hard memory limit, a C stack overflow) in three situations (while
idle, while a cell executes, inside a comm callback) and checks everything the
frontend relies on afterwards.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.kernel import crash_helpers
from tests.kernel.comm_helpers import (
    ECHO_TARGET,
    comm_info,
    comm_msg,
    comm_open,
    comms_of,
    handled,
    new_comm_id,
    wait_iopub,
)
from tests.kernel.crash_helpers import (
    Recorder,
    collect,
    install_spec,
    stderr_text,
    supervisor_pid,
)
from tests.kernel.helpers import (
    Deadline,
    collect_iopub_until_idle,
    evaluate,
    execute,
    execute_ok,
    get_reply,
    of_type,
    parent_id,
    pid_exists,
    relaykernel_only,
    stream_text,
    wait_for,
)

pytestmark = relaykernel_only

#: the fixture that starts kernels and checks, at teardown, that none left a process behind
relay = crash_helpers.relay

#: The hard memory limit of the kernels that test it (GiB); the cells allocate 600 MiB.
MEMORY_LIMIT = 0.4
ALLOCATE = "_b = b'x' * (600 * 1024**2)\ntime.sleep(30)\n"

#: Run first in every crash test's kernel: the modules the triggers use, a comm the
#: kernel opens, and a target 'crash' whose comms run the code a comm_msg carries.
SETUP = """\
import ctypes, functools, os, signal, sys, threading, time
from comm import create_comm
_kept = create_comm(target_name='kept-by-kernel', data={'n': 1})

def _crash_target(comm, open_msg):
    def _on_msg(msg):
        exec(msg['content']['data']['code'], globals())
    comm.on_msg(_on_msg)

get_ipython().kernel.comm_manager.register_target('crash', _crash_target)
marker = %r
_kept.comm_id
"""

# A Python-level recursion does not overflow the C stack in CPython 3.11+ (pure
# Python calls do not nest C frames: with a huge recursion limit the frames just
# fill the heap until RecursionError).  Recursing through a C function does: every
# level nests functools.reduce's C frame, and the 8 MiB stack overflows -> SIGSEGV.
STACK_OVERFLOW = ("sys.setrecursionlimit(10**8)\n"
                  "_f = lambda: functools.reduce(lambda a, b: _f(), [1, 2])\n"
                  "_f()\n")


@dataclass(frozen=True)
class Cause:
    code: str | None  # what the worker runs to die; None: the test SIGKILLs it from outside
    words: str  # in the reply's evalue (and the report) when the worker dies of it
    spec_args: tuple[str, ...] = ()


CAUSES = {
    "exit3": Cause("os._exit(3)\n", "exit code 3"),
    "segfault": Cause("ctypes.string_at(0)\n", "SIGSEGV"),
    "sigkill": Cause(None, "SIGKILL"),
    "memory": Cause(ALLOCATE, "memory limit", (f"--Supervisor.memory_limit={MEMORY_LIMIT}",)),
    "stack_overflow": Cause(STACK_OVERFLOW, "SIGSEGV"),
}
SITUATIONS = ("idle", "executing", "comm_callback")


#: These tests cover a crash with no snapshot to roll back to (a fresh worker, an
#: empty namespace): snapshots are off in their kernels, so whether one was taken
#: before the crash cannot depend on timing.  tests/kernel/test_snapshots.py
#: covers the rollback.
NO_SNAPSHOTS = ("--Supervisor.snapshots=False",)


def _fresh_worker_spec() -> str:
    return install_spec("relaykernel-crash", NO_SNAPSHOTS)


def _spec_for(cause: Cause) -> str:
    if not cause.spec_args:
        return _fresh_worker_spec()
    return install_spec("relaykernel-crash-memory", cause.spec_args + NO_SNAPSHOTS)


def _died_report(msg: dict[str, Any]) -> bool:
    return (msg["msg_type"] == "stream" and msg["content"]["name"] == "stderr"
            and "died" in msg["content"]["text"])


def _history_sources(kc, n: int = 50) -> list[str]:
    reply = get_reply(kc, kc.history(hist_access_type="tail", n=n, raw=True, output=False))
    assert reply["content"]["status"] == "ok", reply["content"]
    return [entry[2] for entry in reply["content"]["history"]]


def _check_report(text: str, words: str, open_comms: int) -> None:
    """The explanation: on stderr ("... died: ...") or in a cell's error ("WorkerDied: ...")."""
    assert "died" in text or text.startswith("WorkerDied: "), text
    assert words in text, text
    assert "Kept" in text, text
    assert f"{open_comms} open comm(s)" in text, text


@pytest.mark.parametrize("situation", SITUATIONS)
@pytest.mark.parametrize("cause_name", [
    pytest.param(name, marks=pytest.mark.slow) if CAUSES[name].spec_args else name
    for name in CAUSES])
def test_crash_matrix(relay, cause_name: str, situation: str) -> None:
    cause = CAUSES[cause_name]
    h = relay.start(_spec_for(cause))
    kc = h.kc
    rec = Recorder(kc)
    marker = f"marker-{uuid.uuid4().hex}"

    # -- before: state the crash must not lose (comms, count, history) and must lose (variables)
    setup_reply, setup_iopub = execute_ok(kc, SETUP % marker)
    kept_id = next(m for m in setup_iopub if m["msg_type"] == "execute_result")[
        "content"]["data"]["text/plain"].strip("'")
    session = setup_iopub[0]["header"]["session"]
    count_before = setup_reply["content"]["execution_count"]
    crash_id = new_comm_id()
    handled(kc, comm_open(kc, crash_id, "crash"))
    comms_before = comm_info(kc)
    assert {kept_id, crash_id} <= set(comms_before), comms_before
    sup = supervisor_pid(h)
    old_worker = h.worker_pid()
    relay.track(h)
    # IPython writes history from a background thread, so a worker that dies within
    # milliseconds of a cell may not have saved it yet (ipykernel alike).  A
    # history_request flushes it: from here on the marker cell is on disk.
    assert any(marker in s for s in _history_sources(kc))

    # -- the crash
    def kill_worker() -> None:
        os.kill(old_worker, signal.SIGKILL)

    crash_count = None
    if situation == "idle":
        if cause.code is None:
            kill_worker()
        else:
            reply, _ = execute_ok(kc, f"threading.Timer(0.3, exec, args=({cause.code!r}, "
                                      "globals())).start()")
            crash_count = reply["content"]["execution_count"]
        report_msg = wait_iopub(kc, _died_report, timeout=30, what="the crash report")
        assert report_msg["parent_header"] == {}, report_msg["parent_header"]
        _check_report(report_msg["content"]["text"], cause.words, len(comms_before))
    elif situation == "executing":
        code = cause.code or "time.sleep(30)\n"
        msg_id = kc.execute(code, allow_stdin=False)
        armed = {"done": False}

        def on_msg(msg: dict[str, Any]) -> None:
            # the worker publishes execute_input just before it runs the cell
            if cause.code is None and msg["msg_type"] == "execute_input" and not armed["done"]:
                armed["done"] = True
                kill_worker()

        iopub = collect(kc, msg_id, timeout=40, on_msg=on_msg)
        reply = get_reply(kc, msg_id, timeout=10)
        content = reply["content"]
        assert content["status"] == "error", content
        assert content["ename"] == "WorkerDied", content
        assert cause.words in content["evalue"], content["evalue"]
        crash_count = content["execution_count"]
        assert crash_count == count_before + 1, (count_before, content)
        errors = of_type(iopub, "error")
        assert [e["content"]["ename"] for e in errors] == ["WorkerDied"], errors
        # the cell's error carries the whole explanation, once: not repeated on stderr
        _check_report("\n".join(errors[0]["content"]["traceback"]), cause.words, len(comms_before))
        assert "Kept" not in stderr_text(iopub), stderr_text(iopub)
        assert iopub[-1]["msg_type"] == "status"
        assert iopub[-1]["content"]["execution_state"] == "idle"
    else:  # comm_callback
        code = cause.code or "print('armed', flush=True)\ntime.sleep(30)\n"
        msg_id = comm_msg(kc, crash_id, {"code": code})
        armed = {"done": False}

        def on_msg(msg: dict[str, Any]) -> None:
            if (cause.code is None and not armed["done"] and msg["msg_type"] == "stream"
                    and "armed" in msg["content"]["text"]):
                armed["done"] = True
                kill_worker()

        iopub = collect(kc, msg_id, timeout=40, on_msg=on_msg)
        assert iopub[0]["content"].get("execution_state") == "busy", iopub[0]
        _check_report(stderr_text(iopub), cause.words, len(comms_before))
        assert iopub[-1]["msg_type"] == "status"
        assert iopub[-1]["content"]["execution_state"] == "idle"

    # -- after: the same kernel, a new worker
    assert supervisor_pid(h) == sup and pid_exists(sup)
    assert h.km.is_alive()
    wait_for(kc.is_alive, 5, what="heartbeat")
    wait_for(lambda: not pid_exists(old_worker), 10, what="the dead worker to be reaped")
    comms_after = comm_info(kc)
    assert {kept_id, crash_id} <= set(comms_after), comms_after
    assert comms_after[crash_id] == {"target_name": "crash"}

    reply, iopub = execute_ok(kc, "1+1")
    result = of_type(iopub, "execute_result")
    assert [r["content"]["data"]["text/plain"] for r in result] == ["2"]
    count_after = reply["content"]["execution_count"]
    assert count_after > count_before and count_after > 1
    if crash_count is not None:
        assert count_after == crash_count + 1, (crash_count, count_after)
    new_worker = h.worker_pid()
    relay.track(h)
    assert new_worker != old_worker
    assert evaluate(kc, "'marker' in dir()") == "False"  # the namespace is the new worker's

    sources = _history_sources(kc)
    assert any(marker in s for s in sources), sources[-10:]
    assert "1+1" in sources

    rec.assert_one_reply_each()
    rec.assert_no_restart_seen(session)


def test_stack_overflow_is_a_real_crash(relay) -> None:
    """The stack-overflow trigger really overflows (SIGSEGV), not a RecursionError."""
    h = relay.start(_fresh_worker_spec())
    reply, iopub = execute(h.kc, "import functools, sys\n" + STACK_OVERFLOW, timeout=40)
    assert reply["content"]["ename"] == "WorkerDied", reply["content"]
    assert "SIGSEGV" in reply["content"]["evalue"]
    # faulthandler's last words show the recursion (the report keeps their tail)
    report = stderr_text(iopub)
    assert "Last words of the worker" in report and "in <lambda>" in report, report


# ------------------------------------------------------------- queued requests
@pytest.mark.parametrize("stop_on_error", [True, False])
def test_requests_queued_behind_a_crash(relay, stop_on_error: bool) -> None:
    h = relay.start(_fresh_worker_spec())
    kc = h.kc
    rec = Recorder(kc)
    execute_ok(kc, "a = 'old worker'")
    # the sleep lets the next two requests reach the supervisor before the crash: a
    # request that arrives after the error reply is not aborted (nor in ipykernel)
    ids = [kc.execute("import os, time; time.sleep(0.5); os._exit(3)", stop_on_error=stop_on_error),
           kc.execute("a = 1"),
           kc.execute("a")]
    replies = [get_reply(kc, i) for i in ids]
    first = replies[0]["content"]
    assert first["status"] == "error" and first["ename"] == "WorkerDied", first
    assert "exit code 3" in first["evalue"]
    iopub3 = collect(kc, ids[2])
    if stop_on_error:
        assert [r["content"]["status"] for r in replies[1:]] == ["aborted", "aborted"]
        assert not of_type(iopub3, "execute_result")
        # nothing of the aborted cells ran in the new worker
        assert evaluate(kc, "'a' in dir()") == "False"
    else:
        assert [r["content"]["status"] for r in replies[1:]] == ["ok", "ok"]
        results = of_type(iopub3, "execute_result")
        assert [r["content"]["data"]["text/plain"] for r in results] == ["1"]
        counts = [r["content"]["execution_count"] for r in replies]
        assert counts == sorted(counts) and len(set(counts)) == 3, counts
    rec.assert_one_reply_each()


# -------------------------------------------------------------- widgets, comms
def _slider_id(iopub: list[dict[str, Any]]) -> str:
    sliders = [m["content"]["comm_id"] for m in comms_of(iopub, "comm_open")
               if m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"]
    assert len(sliders) == 1, sliders
    return sliders[0]


SLIDER_VALUES = ("[x.value for x in __import__('ipywidgets').Widget.widgets.values() "
                 "if isinstance(x, __import__('ipywidgets').IntSlider)]")


def test_widget_survives_a_crash(relay) -> None:
    pytest.importorskip("ipywidgets", minversion="8")
    h = relay.start(_fresh_worker_spec())
    kc = h.kc
    rec = Recorder(kc)
    _, iopub = execute_ok(kc, "import ipywidgets\ns = ipywidgets.IntSlider(value=3)\n")
    session = iopub[0]["header"]["session"]
    slider = _slider_id(iopub)
    handled(kc, comm_msg(kc, slider, {"method": "update", "state": {"value": 7},
                                      "buffer_paths": []}))
    assert evaluate(kc, "s.value") == "7"
    old_worker = h.worker_pid()

    reply, _ = execute(kc, "import os; os._exit(3)")
    assert reply["content"]["ename"] == "WorkerDied"

    # the new worker re-created the slider, with the frontend's last value, unasked
    assert evaluate(kc, SLIDER_VALUES) == "[7]"
    assert h.worker_pid() != old_worker
    assert slider in comm_info(kc, "jupyter.widget")

    # the frontend moves it again: the new worker's object follows
    handled(kc, comm_msg(kc, slider, {"method": "update", "state": {"value": 9},
                                      "buffer_paths": []}))
    assert evaluate(kc, SLIDER_VALUES) == "[9]"

    # a reloaded page asks for all states while a cell is busy: answered at once
    busy_id = kc.execute("import time; time.sleep(5)")
    wait_iopub(kc, lambda m: m["msg_type"] == "execute_input" and parent_id(m) == busy_id,
               timeout=10, what="the sleeping cell to start")
    started = time.monotonic()
    control = new_comm_id()
    comm_open(kc, control, "jupyter.widget.control", metadata={"version": "1.0.0"})
    comm_msg(kc, control, {"method": "request_states"})
    states_msg = wait_iopub(
        kc, lambda m: m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == control,
        timeout=4, what="update_states on the control comm")
    elapsed = time.monotonic() - started
    data = states_msg["content"]["data"]
    assert data["method"] == "update_states"
    assert data["states"][slider]["state"]["value"] == 9
    assert data["states"][slider]["model_name"] == "IntSliderModel"
    assert elapsed < 4, elapsed
    h.km.interrupt_kernel()  # do not wait out the sleep
    reply = get_reply(kc, busy_id, timeout=10)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]

    rec.assert_one_reply_each()
    rec.assert_no_restart_seen(session)


def test_frontend_comm_is_replayed_when_its_target_returns(relay) -> None:
    h = relay.start(_fresh_worker_spec())
    kc = h.kc
    execute_ok(kc, ECHO_TARGET)
    cid = new_comm_id()
    handled(kc, comm_open(kc, cid, "echo"))
    iopub = handled(kc, comm_msg(kc, cid, {"n": 1}))
    assert [m["content"]["data"] for m in comms_of(iopub, "comm_msg", cid)] == [{"n": 1}]

    reply, _ = execute(kc, "import os; os._exit(3)")
    assert reply["content"]["ename"] == "WorkerDied"
    assert comm_info(kc)[cid] == {"target_name": "echo"}

    # the new worker knows no 'echo' target yet: the message is not answered, not fatal
    iopub = handled(kc, comm_msg(kc, cid, {"n": 2}))
    assert not comms_of(iopub, "comm_msg", cid)
    assert comm_info(kc).get(cid) == {"target_name": "echo"}

    # once the target is registered again, the same comm_id echoes
    execute_ok(kc, ECHO_TARGET)
    iopub = handled(kc, comm_msg(kc, cid, {"n": 3}))
    assert [m["content"]["data"] for m in comms_of(iopub, "comm_msg", cid)] == [{"n": 3}]
    assert not comms_of(iopub, "comm_close", cid)


# --------------------------------------------------------------- hard interrupt
def test_interrupt_ignored_replaces_the_worker(relay) -> None:
    h = relay.start(install_spec("relaykernel-grace1", ("--Supervisor.interrupt_grace=1",)))
    kc = h.kc
    sup = supervisor_pid(h)
    old_worker = h.worker_pid()
    msg_id = kc.execute("import signal, time\n"
                        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                        "print('ignoring SIGINT', flush=True)\n"
                        "time.sleep(60)\n")
    wait_iopub(kc, lambda m: m["msg_type"] == "stream" and "ignoring" in m["content"]["text"],
               timeout=10, what="the cell to ignore SIGINT")
    started = time.monotonic()
    h.km.interrupt_kernel()
    reply = get_reply(kc, msg_id, timeout=10)
    elapsed = time.monotonic() - started
    print(f"hard interrupt: reply {elapsed:.2f}s after the interrupt")
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "WorkerDied", content
    assert "replaced" in content["evalue"] and "interrupt" in content["evalue"], content
    assert 0.9 <= elapsed < 5, elapsed
    # where the cell was stuck: its main thread's stack, written when the grace ran out
    said = stream_text(collect_iopub_until_idle(kc, msg_id, timeout=10), "stderr")
    assert "Last words of the worker" in said and "line 4 in <module>" in said, said
    _, iopub = execute_ok(kc, "1+1")
    assert of_type(iopub, "execute_result")[0]["content"]["data"]["text/plain"] == "2"
    assert h.worker_pid() != old_worker
    assert supervisor_pid(h) == sup and pid_exists(sup)
    wait_for(lambda: not pid_exists(old_worker), 10, what="the replaced worker to be gone")


def test_interrupt_honoured_keeps_the_worker(relay) -> None:
    """Contrast: a cell that stops on SIGINT is interrupted, the worker (and x) stay."""
    h = relay.start(install_spec("relaykernel-grace1", ("--Supervisor.interrupt_grace=1",)))
    kc = h.kc
    execute_ok(kc, "x = 5")
    worker = h.worker_pid()
    msg_id = kc.execute("import time; time.sleep(60)")
    wait_iopub(kc, lambda m: m["msg_type"] == "execute_input" and parent_id(m) == msg_id,
               timeout=10, what="the cell to start")
    deadline = Deadline(5)
    h.km.interrupt_kernel()
    reply = get_reply(kc, msg_id, timeout=deadline.remaining())
    assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    assert evaluate(kc, "x") == "5"
    assert h.worker_pid() == worker


THREAD_SIGNAL_MASKS = """
import os, json
def blocked(path):
    for line in open(path):
        if line.startswith('SigBlk:'):
            mask = int(line.split()[1], 16)
            return {'SIGINT': bool(mask & (1 << 1)), 'SIGUSR1': bool(mask & (1 << 9)),
                    'SIGUSR2': bool(mask & (1 << 11))}
masks = {}
for tid in os.listdir('/proc/self/task'):
    name = open(f'/proc/self/task/{tid}/comm').read().strip()
    masks[f'{name}:{tid}'] = (int(tid) == os.getpid(), blocked(f'/proc/self/task/{tid}/status'))
print(json.dumps(masks))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread signal masks from /proc")
def test_interrupts_can_only_land_on_the_main_thread(kernel) -> None:
    """Linux hands a process-directed signal to any thread that does not block it;
    one that lands on a helper thread leaves the cell asleep (time.sleep, a blocking
    call) until the grace period replaces the worker.  Every thread the worker has
    before user code runs (its own, libzmq's, IPython's history thread) blocks
    SIGINT, SIGUSR1 and SIGUSR2 (wire.STACK_SIGNAL); the main thread does not."""
    import json

    _, iopub = execute_ok(kernel.kc, THREAD_SIGNAL_MASKS)
    masks = json.loads(stream_text(iopub))
    assert len(masks) >= 4, masks  # main, fd reader, flush ticker, libzmq's, ...
    for thread, (is_main, blocked) in masks.items():
        expected = {"SIGINT": not is_main, "SIGUSR1": not is_main, "SIGUSR2": not is_main}
        assert blocked == expected, (thread, masks)
