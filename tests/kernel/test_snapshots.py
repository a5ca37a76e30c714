"""Snapshots: a worker crash rolls the variables back to the state before the cell.

relaykernel only (ipykernel dies with its process).  Each test drives a real
kernel through jupyter_client; the ``relay`` fixture checks at teardown that
no process (snapshots included) outlived the kernel.  A snapshot is taken
once the worker has been idle for a moment after a cell
(relaykernel/worker/snapshot.py): :func:`_snapshot_of` waits for it by asking
the worker itself.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import psutil
import pytest

from tests.kernel import crash_helpers
from tests.kernel.comm_helpers import comm_msg, comms_of, handled
from tests.kernel.crash_helpers import install_spec
from tests.kernel.helpers import (
    KERNEL_NAME,
    Deadline,
    evaluate,
    execute,
    execute_ok,
    get_reply,
    relaykernel_only,
    stream_text,
    wait_for,
)

pytestmark = relaykernel_only

relay = crash_helpers.relay

#: Variables of many kinds, and a class defined in a cell.
DEFINE = """\
import numpy as np, pandas as pd
n = 41
arr = np.arange(1_000_000, dtype=np.float64)
df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
square = lambda v: v * v
gen = (i * 10 for i in range(5))
next(gen); next(gen)
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2
p = Point(3, 4)
"""

CHECK = "(n, float(arr.sum()), df.b.tolist(), square(7), next(gen), type(p).__name__, p.norm2())"
EXPECTED = "(41, 499999500000.0, ['x', 'y', 'z'], 49, 20, 'Point', 25)"

SEGFAULT = "n = 1000\nimport ctypes; ctypes.string_at(0)\n"
EXIT = "n = 1000\nimport os; os._exit(3)\n"


def _snapshot_of(kc: Any, worker_pid: int, timeout: float = 10.0) -> int:
    """Wait until the worker holds a snapshot taken after its last cell; its pid."""
    found: list[int] = []

    def taken() -> bool:
        children = [c for c in psutil.Process(worker_pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        found[:] = [c.pid for c in children]
        return len(found) == 1

    wait_for(taken, timeout)
    return found[0]


def _fresh_snapshot(kc: Any, timeout: float = 10.0) -> int:
    """After a cell: the worker's pid, once a snapshot newer than the cell is kept.
    Asked for with ``%snapshot now`` (silent: no execution count): after an earlier
    snapshot, a quick cell does not get one of its own (the cells' budget)."""
    worker = _worker_pid(kc)
    before = {c.pid for c in psutil.Process(worker).children()}
    execute(kc, "%snapshot now", silent=True, store_history=False)
    wait_for(lambda: _snapshot_of(kc, worker, timeout) not in before, timeout)
    return worker


def _worker_pid(kc: Any) -> int:
    reply, _ = execute(kc, "", silent=True, store_history=False,
                       user_expressions={"pid": "__import__('os').getpid()"})
    return int(reply["content"]["user_expressions"]["pid"]["data"]["text/plain"])


def _define_and_snapshot(h: Any) -> int:
    execute_ok(h.kc, DEFINE)
    return _fresh_snapshot(h.kc)


def _crash(h: Any, code: str | None, worker_pid: int) -> dict[str, Any]:
    """Crash the worker with ``code`` (None: SIGKILL it from outside while a cell runs);
    the crashed cell's reply."""
    if code is None:
        msg_id = h.kc.execute("n = 1000\nprint('started', flush=True)\nimport time; time.sleep(60)\n")
        deadline = Deadline(10.0)
        while True:
            msg = h.kc.get_iopub_msg(timeout=deadline.remaining())
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        os.kill(worker_pid, signal.SIGKILL)
        reply = get_reply(h.kc, msg_id)
    else:
        reply, _ = execute(h.kc, code)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "WorkerDied"
    return reply


def _report(reply: dict[str, Any]) -> str:
    """An error reply's traceback as one text (a crash's report: rolled back, or why not)."""
    return "\n".join(reply["content"]["traceback"])


@pytest.mark.parametrize("code", [SEGFAULT, EXIT, None], ids=["segfault", "os_exit", "sigkill"])
def test_variables_survive_a_crash(relay, code: str | None) -> None:
    h = relay.start(KERNEL_NAME)
    worker = _define_and_snapshot(h)
    relay.track(h)
    reply = _crash(h, code, worker)
    text = _report(reply)
    assert "Rolled back to the state before cell [2]" in text, text
    assert "Not rolled back: files written" in text, text
    assert "%snapshot now" not in text, text  # one cell rolled back: nothing to advise
    assert evaluate(h.kc, CHECK) == EXPECTED  # n is 41 again: the crashed cell's n = 1000 is undone
    assert _worker_pid(h.kc) != worker


def test_a_snapshot_still_busy_after_its_fork_survives_its_worker(relay) -> None:
    """The worker moves its snapshot out of its process group as it forks: the supervisor
    kills that group with a dead worker, and a child that has not run yet (an
    os.register_at_fork hook here, a loaded machine in CI) would die with it."""
    h = relay.start(KERNEL_NAME)
    execute_ok(h.kc, "import os, time\nos.register_at_fork(after_in_child=lambda: time.sleep(2))\nn = 41")
    worker = _fresh_snapshot(h.kc)
    relay.track(h)
    reply = _crash(h, SEGFAULT, worker)
    text = _report(reply)
    assert "Rolled back to the state before cell" in text, text
    assert evaluate(h.kc, "n") == "41"


def test_crashes_back_to_back(relay) -> None:
    h = relay.start(KERNEL_NAME)
    worker = _define_and_snapshot(h)
    for i in range(3):
        relay.track(h)
        reply = _crash(h, SEGFAULT, worker)
        assert "killed by SIGSEGV" in reply["content"]["evalue"], reply["content"]  # a restored one's too
        assert evaluate(h.kc, "n") == str(41 + i)
        execute_ok(h.kc, "n += 1")
        worker = _fresh_snapshot(h.kc)
    assert evaluate(h.kc, CHECK.replace("next(gen)", "20")) == EXPECTED.replace("41", "44")


def test_cells_after_the_snapshot_are_named(relay) -> None:
    """A crash before the next snapshot: the state is older than the crashed cell."""
    h = relay.start(KERNEL_NAME)
    _define_and_snapshot(h)
    relay.track(h)
    first = h.kc.execute("n = 7")  # no idle moment between it and the crash: no snapshot
    crash = h.kc.execute(SEGFAULT)
    assert get_reply(h.kc, first)["content"]["status"] == "ok"
    reply = get_reply(h.kc, crash)
    text = _report(reply)
    assert "Rolled back to the state before cells [2..3]" in text, text
    assert "`%snapshot now` takes one after a cell" in text, text  # how to have one next time
    assert evaluate(h.kc, "n") == "41"


def test_restart_gives_an_empty_namespace(relay) -> None:
    h = relay.start(install_spec("relaykernel-provisioned"))  # restarts in place
    worker = _define_and_snapshot(h)
    snapshot = _snapshot_of(h.kc, worker)
    relay.track(h)
    reply = get_reply(h.kc, h.kc.shutdown(restart=True), channel="control", timeout=10)
    assert reply["content"] == {"status": "ok", "restart": True}
    reply, _ = execute(h.kc, "n")
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "NameError"
    wait_for(lambda: not _alive(snapshot), 10.0)  # a restart ends the snapshot too


def test_stdin_and_output_in_a_restored_worker(relay) -> None:
    h = relay.start(KERNEL_NAME)
    worker = _define_and_snapshot(h)
    relay.track(h)
    _crash(h, SEGFAULT, worker)
    _, iopub = execute_ok(h.kc, "print('n is', n)\nimport os; os.system('echo from a child')")
    assert "n is 41\n" in stream_text(iopub) and "from a child\n" in stream_text(iopub)
    msg_id = h.kc.execute("answer = input('name? ')\nprint('got', answer)", allow_stdin=True)
    request = h.kc.get_stdin_msg(timeout=10)
    assert request["content"]["prompt"] == "name? "
    h.kc.input("restored")
    assert get_reply(h.kc, msg_id)["content"]["status"] == "ok"
    assert evaluate(h.kc, "answer") == "'restored'"


def test_a_cell_past_the_interrupt_grace_rolls_back(relay) -> None:
    """The supervisor replaces a worker that ignores an interrupt: the snapshot takes over."""
    h = relay.start(install_spec("relaykernel-snapshot-grace", ("--Supervisor.interrupt_grace=0.5",)))
    _define_and_snapshot(h)
    relay.track(h)
    msg_id = h.kc.execute("n = 1000\nimport signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                          "print('started', flush=True)\ntime.sleep(60)\n")
    deadline = Deadline(10.0)
    while True:
        msg = h.kc.get_iopub_msg(timeout=deadline.remaining())
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    h.km.interrupt_kernel()
    reply = get_reply(h.kc, msg_id)
    text = _report(reply)
    assert reply["content"]["ename"] == "WorkerDied" and "Rolled back to the state before cell [2]" in text, text
    assert evaluate(h.kc, CHECK) == EXPECTED


@pytest.mark.slow
def test_the_hard_memory_limit_rolls_back(relay) -> None:
    h = relay.start(install_spec("relaykernel-snapshot-memory", ("--Supervisor.memory_limit=0.4",)))
    _define_and_snapshot(h)
    relay.track(h)
    reply, _ = execute(h.kc, "n = 1000\n_b = b'x' * (600 * 1024**2)\nimport time; time.sleep(30)\n")
    text = _report(reply)
    assert reply["content"]["ename"] == "WorkerDied" and "memory limit" in text, text
    assert "Rolled back to the state before cell [2]" in text, text
    assert evaluate(h.kc, CHECK) == EXPECTED


def test_a_restored_worker_takes_interrupts_and_awaits(relay) -> None:
    h = relay.start(KERNEL_NAME)
    worker = _define_and_snapshot(h)
    relay.track(h)
    _crash(h, SEGFAULT, worker)
    reply, _ = execute(h.kc, "import asyncio\nawait asyncio.sleep(0.01)\nn")
    assert reply["content"]["status"] == "ok"
    msg_id = h.kc.execute("print('started', flush=True)\nimport time; time.sleep(60)")
    deadline = Deadline(10.0)
    while True:
        msg = h.kc.get_iopub_msg(timeout=deadline.remaining())
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    h.km.interrupt_kernel()
    assert get_reply(h.kc, msg_id)["content"]["ename"] == "KeyboardInterrupt"
    assert evaluate(h.kc, "n") == "41"


def test_threads_restarted_after_a_snapshot_leave_interrupts_to_the_main_thread(relay) -> None:
    """IPython stops its history-saving thread before every fork and the next cell
    starts it again -- with SIGINT unblocked, so an interrupt could land on it and leave
    an awaiting cell asleep until the grace period replaced the worker (seen in CI,
    test_interrupting_an_awaiting_cell_keeps_the_worker).  After a snapshot every thread
    but the main one still blocks the main thread's signals."""
    import json

    from tests.kernel.test_crash import THREAD_SIGNAL_MASKS

    h = relay.start(KERNEL_NAME)
    worker = _define_and_snapshot(h)
    execute_ok(h.kc, "m = n + 1")  # a cell after the snapshot stores its input
    _, iopub = execute_ok(h.kc, THREAD_SIGNAL_MASKS)
    masks = json.loads(stream_text(iopub))
    assert len(masks) >= 4, masks
    for thread, (is_main, blocked) in masks.items():
        expected = {"SIGINT": not is_main, "SIGUSR1": not is_main, "SIGUSR2": not is_main}
        assert blocked == expected, (thread, masks)
    assert _worker_pid(h.kc) == worker


def test_widgets_in_a_restored_worker_take_the_latest_state(relay) -> None:
    """The slider object of the snapshot is the one that comes back, with the value the
    frontend gave it after the snapshot; moving it afterwards still reaches it."""
    pytest.importorskip("ipywidgets", minversion="8")
    h = relay.start(KERNEL_NAME)
    _, iopub = execute_ok(h.kc, "import ipywidgets\ns = ipywidgets.IntSlider(value=3)\nn = 41")
    slider = next(m["content"]["comm_id"] for m in comms_of(iopub, "comm_open")
                  if m["content"]["data"]["state"].get("_model_name") == "IntSliderModel")
    widgets = evaluate(h.kc, "len(ipywidgets.Widget.widgets)")  # the slider, its layout and style
    worker = _fresh_snapshot(h.kc)
    relay.track(h)
    handled(h.kc, comm_msg(h.kc, slider, {"method": "update", "state": {"value": 5}, "buffer_paths": []}))
    _crash(h, SEGFAULT, worker)
    assert evaluate(h.kc, "(s.value, s.comm.comm_id, len(ipywidgets.Widget.widgets))") == f"(5, '{slider}', {widgets})"
    handled(h.kc, comm_msg(h.kc, slider, {"method": "update", "state": {"value": 7}, "buffer_paths": []}))
    assert evaluate(h.kc, "s.value") == "7"


def test_a_user_thread_skips_snapshots_with_a_reason(relay) -> None:
    h = relay.start(KERNEL_NAME)
    worker = _define_and_snapshot(h)
    relay.track(h)
    execute_ok(h.kc, "import threading; stop = threading.Event()\n"
                     "t = threading.Thread(target=stop.wait, name='mine'); t.start()")
    wait_for(lambda: not [c for c in psutil.Process(worker).children()
                          if c.status() != psutil.STATUS_ZOMBIE], 10.0)
    execute_ok(h.kc, "%snapshot now")  # asked once: skipped with the same reason, not asked again and again
    wait_for(lambda: evaluate(h.kc, "__import__('relaykernel.worker.snapshot').worker.snapshot.current._now")
             == "False", 10.0)
    reply = _crash(h, SEGFAULT, worker)
    text = _report(reply)
    assert "No snapshot to roll back to: the worker kept none: threads the user started" in text, text
    assert "mine" in text, text
    reply, _ = execute(h.kc, "n")
    assert reply["content"]["ename"] == "NameError"


def test_snapshots_off(relay) -> None:
    h = relay.start(install_spec("relaykernel-no-snapshots", ("--Supervisor.snapshots=False",)))
    execute_ok(h.kc, "n = 41")
    worker = _worker_pid(h.kc)
    reply = _crash(h, SEGFAULT, worker)
    text = _report(reply)
    assert "snapshots are off" in text, text
    assert evaluate(h.kc, "'n' in dir()") == "False"


def test_no_snapshot_outlives_the_supervisor(relay) -> None:
    h = relay.start(KERNEL_NAME)
    worker = _define_and_snapshot(h)
    snapshot = _snapshot_of(h.kc, worker)
    relay.track(h)
    os.kill(h.pid, signal.SIGKILL)
    wait_for(lambda: not _alive(snapshot) and not _alive(worker), 10.0)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_snapshot_magic_shows_and_turns_snapshots(relay) -> None:
    """%snapshot tells which cell the snapshot holds; %snapshot off drops it (the supervisor
    too: a crash then loses the variables) for the session, next workers included;
    %snapshot on takes them again."""
    h = relay.start(KERNEL_NAME)
    worker = _define_and_snapshot(h)
    _, iopub = execute_ok(h.kc, "%snapshot")
    assert "Snapshots are on. The latest holds the state before cell [2]" in stream_text(iopub), iopub
    _, iopub = execute_ok(h.kc, "%snapshot off")
    assert "Snapshots are off for this session" in stream_text(iopub), iopub
    wait_for(lambda: not [c for c in psutil.Process(worker).children()
                          if c.status() != psutil.STATUS_ZOMBIE], 10.0)
    relay.track(h)
    reply = _crash(h, SEGFAULT, worker)
    text = _report(reply)
    assert "No snapshot to roll back to: snapshots are off (%snapshot off)" in text, text
    _, iopub = execute_ok(h.kc, "%snapshot")  # a new worker: still off for the session
    assert "Snapshots are off for this session (%snapshot off)" in stream_text(iopub), iopub
    _, iopub = execute_ok(h.kc, "%snapshot on\nn = 5")
    assert "Snapshots are on" in stream_text(iopub), iopub
    worker = _fresh_snapshot(h.kc)
    relay.track(h)
    reply = _crash(h, SEGFAULT, worker)
    text = _report(reply)
    assert "Rolled back to the state before cell" in text, text
    assert evaluate(h.kc, "n") == "5"
    reply, _ = execute(h.kc, "%snapshot sometimes")
    assert reply["content"]["ename"] == "UsageError"


def _status_says(kc: Any, words: str, timeout: float = 10.0) -> str:
    """Run %snapshot until its status says ``words`` (a skip is decided once the
    worker is idle after a cell); the status."""
    said: list[str] = []

    def says() -> bool:
        _, iopub = execute_ok(kc, "%snapshot")
        said[:] = [stream_text(iopub)]
        return words in said[0]

    wait_for(says, timeout)
    return said[0]


def _stderr_says(kc: Any, words: str, timeout: float = 10.0) -> str:
    """Wait for a stderr stream message saying ``words`` (whatever its parent: the
    worker says it once idle after a cell); its text."""
    deadline = Deadline(timeout)
    while True:
        msg = kc.get_iopub_msg(timeout=deadline.remaining())
        if msg["msg_type"] == "stream" and words in msg["content"]["text"]:
            return str(msg["content"]["text"])


def test_a_large_worker_skips_snapshots_with_a_reason(relay) -> None:
    h = relay.start(install_spec("relaykernel-snapshot-max", ("--Supervisor.snapshot_max_memory=0.25",)))
    execute_ok(h.kc, "n = 41\nbig = b'x' * (300 * 1024**2)")  # the first cell: no snapshot before it
    status = _status_says(h.kc, "none is kept: resident memory is")
    assert "above Supervisor.snapshot_max_memory (0.25 GiB)" in status, status
    relay.track(h)
    reply = _crash(h, SEGFAULT, 0)
    text = _report(reply)
    assert "No snapshot to roll back to: the worker kept none: resident memory is" in text, text
    reply, _ = execute(h.kc, "n")
    assert reply["content"]["ename"] == "NameError"


@pytest.mark.slow
def test_a_worker_grown_too_large_for_a_snapshot_keeps_its_older_one(relay) -> None:
    """Past snapshot_max_memory (half the memory limit) no new snapshot is taken, but the
    one from before is kept, so the memory-limit crash that a worker that large is near
    rolls back to it (before the cells since) rather than to nothing."""
    h = relay.start(install_spec("relaykernel-snapshot-keep", ("--Supervisor.memory_limit=0.8",)))
    _define_and_snapshot(h)
    execute_ok(h.kc, "big = b'x' * (400 * 1024**2)")
    said = _stderr_says(h.kc, "no new snapshot of the worker is taken: resident memory is")
    assert "The one before cell [2] is kept: a crash rolls back to it." in said, said
    status = _status_says(h.kc, "No newer one is taken: resident memory is")
    assert "The latest holds the state before cell [2]" in status, status
    assert "above Supervisor.snapshot_max_memory (0.4 GiB)" in status, status
    execute_ok(h.kc, "n = 7")
    relay.track(h)
    reply, _ = execute(h.kc, "more = b'y' * (500 * 1024**2)\nimport time; time.sleep(30)\n")
    text = _report(reply)
    assert reply["content"]["ename"] == "WorkerDied" and "memory limit of 0.8 GiB exceeded" in text, text
    assert "Rolled back to the state before cells [2.." in text, text  # through this cell
    assert evaluate(h.kc, CHECK) == EXPECTED
    assert evaluate(h.kc, "'big' in dir()") == "False"


#: A cell that rewrites 64 MiB the worker shares with its snapshot (the snapshot's own
#: pages grow by as much: within its share of the limit, resources.SNAPSHOT_SHARE),
#: then grows the worker to 24 MiB under the 1 GiB limit by itself: with its snapshot,
#: the kernel passes the limit.
NEAR_THE_LIMIT = """\
n = 1000
a += 1
_rss = int(open('/proc/self/statm').read().split()[1]) * __import__('os').sysconf('SC_PAGE_SIZE')
_fill = np.ones((1024**3 - 24 * 1024**2 - _rss) // 8)
import time; time.sleep(5)
"""


@pytest.mark.slow
def test_a_cell_near_the_limit_rolls_back_rather_than_drop_the_snapshot(relay) -> None:
    """The worker alone stays under the memory limit, and its snapshot's own pages push the
    kernel past it: the snapshot, within its share of the limit, is kept, and the cell is
    stopped as if it had passed the limit (the snapshot takes over).  Dropped instead, it
    would be gone right before the cell passed the limit by itself."""
    h = relay.start(install_spec("relaykernel-snapshot-near", BIG_WORKER))
    execute_ok(h.kc, "import numpy as np\na = np.ones(64 * 1024**2 // 8)\nn = 41")
    _fresh_snapshot(h.kc)
    relay.track(h)
    reply, iopub = _run_all_iopub(h.kc, NEAR_THE_LIMIT)
    text = _report(reply)
    assert reply["content"]["ename"] == "WorkerDied", reply["content"]
    assert "memory limit of 1 GiB exceeded" in text and "and its snapshot 0.0" in text, text
    assert "Rolled back to the state before cell [2]" in text, text
    assert "snapshot was dropped" not in stream_text(iopub, "stderr")
    assert evaluate(h.kc, "(n, float(a[0]))") == "(41, 1.0)"


def test_a_cuda_context_skips_snapshots_with_a_reason(relay, tmp_path) -> None:
    """libcuda mapped in the worker (here a copy of libm under its name: the check reads
    /proc/self/maps) stops snapshots, with the reason once on stderr."""
    h = relay.start(KERNEL_NAME)
    worker = _define_and_snapshot(h)
    fake = tmp_path / "libcuda.so.1"
    execute_ok(h.kc, f"import ctypes, ctypes.util, shutil\n"
                     f"shutil.copy('/lib/x86_64-linux-gnu/' + ctypes.util.find_library('m'), {str(fake)!r})\n"
                     f"_cuda = ctypes.CDLL({str(fake)!r})")
    status = _status_says(h.kc, "none is kept: CUDA is initialised in the worker")
    relay.track(h)
    reply = _crash(h, SEGFAULT, worker)
    text = _report(reply)
    assert "No snapshot to roll back to: the worker kept none: CUDA is initialised" in text, (status, text)


#: A worker of ~0.6 GiB, and a memory limit its snapshot's RSS counted again would pass.
BIG_WORKER = ("--Supervisor.memory_limit=1", "--Supervisor.snapshot_max_memory=0.9")
BIG = "import numpy as np\na = np.ones(550 * 1024**2 // 8)\nn = 41"


def _run_all_iopub(kc: Any, code: str, timeout: float = 30.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``code``; its reply and every iopub message until its idle, parentless ones too."""
    msg_id = kc.execute(code)
    reply = get_reply(kc, msg_id, timeout=timeout)
    deadline = Deadline(timeout)
    msgs = []
    while True:
        msg = kc.get_iopub_msg(timeout=deadline.remaining())
        msgs.append(msg)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            return reply, msgs


def _usage(kc: Any) -> dict[str, Any]:
    msg = kc.session.msg("usage_request", {})
    kc.control_channel.send(msg)
    return get_reply(kc, msg["header"]["msg_id"], channel="control")["content"]


@pytest.mark.slow
def test_a_snapshot_counts_by_its_private_pages(relay) -> None:
    """The guard and usage_request count the snapshot of a 0.6 GiB worker by its own
    pages: the kernel stays under a 1 GiB limit that its RSS, counted again, would pass."""
    h = relay.start(install_spec("relaykernel-snapshot-big", BIG_WORKER))
    execute_ok(h.kc, BIG)
    worker = _fresh_snapshot(h.kc)
    snapshot = _snapshot_of(h.kc, worker)
    reply, _ = execute(h.kc, "import time; time.sleep(1.0)")  # the guard samples 5 times meanwhile
    assert reply["content"]["status"] == "ok", reply["content"]
    assert _worker_pid(h.kc) == worker and _alive(snapshot)
    usage = _usage(h.kc)
    own = psutil.Process(worker).memory_info().rss
    assert usage["snapshot"]["pid"] == snapshot, usage
    assert own <= usage["worker"]["memory"] < own + 200 * 1024**2, (own, usage)
    assert usage["snapshot"]["memory"] < 200 * 1024**2, usage


#: A fork of the worker (snapshots skip it: a child process) that lives 2 s, waited for.
FORK_FOR_2S = ("import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(2.0)\n    os._exit(0)\n"
               "os.waitpid(pid, 0)\n")


@pytest.mark.slow
def test_a_fork_the_supervisor_does_not_know_counts_by_its_private_pages(relay) -> None:
    """Any fork of a 0.6 GiB worker, as the next snapshot is between its fork and the
    message that names it: RSS counted again would pass the 1 GiB limit and replace
    the worker, so children count by their own pages once a limit seems reached."""
    h = relay.start(install_spec("relaykernel-snapshot-big", BIG_WORKER))
    execute_ok(h.kc, BIG)
    worker = _worker_pid(h.kc)
    reply, _ = execute(h.kc, FORK_FOR_2S)  # the guard samples 10 times meanwhile
    assert reply["content"]["status"] == "ok", reply["content"]
    assert _worker_pid(h.kc) == worker


@pytest.mark.slow
def test_a_snapshot_is_dropped_before_it_passes_the_memory_limit(relay) -> None:
    """A cell rewrites the 0.6 GiB the worker shares with its snapshot: the copies would
    pass the 1 GiB limit, so the snapshot goes (said once on stderr), not the worker."""
    h = relay.start(install_spec("relaykernel-snapshot-big", BIG_WORKER))
    execute_ok(h.kc, BIG)
    worker = _fresh_snapshot(h.kc)
    snapshot = _snapshot_of(h.kc, worker)
    relay.track(h)
    reply, iopub = _run_all_iopub(h.kc, "a += 1\nimport time; time.sleep(1.0)")
    assert reply["content"]["status"] == "ok", reply["content"]
    said = stream_text(iopub, "stderr")
    assert "the worker's snapshot was dropped: with it the kernel used" in said, said
    assert "memory limit of 1 GiB" in said, said
    assert not _alive(snapshot)
    assert _worker_pid(h.kc) == worker
    assert evaluate(h.kc, "(n, float(a[0]))") == "(41, 2.0)"


def test_rewriting_a_snapshots_memory_spaces_the_next_ones(relay) -> None:
    """A cell that rewrites 300 MB the snapshot shares pays 76,800 copy-on-write faults:
    the snapshot it copied from then stays ≥ 12 s (its cost ≤ 2.5 % of the time) rather
    than a new one making the next rewrite pay again; %snapshot says why."""
    h = relay.start(KERNEL_NAME)
    execute_ok(h.kc, "import numpy as np\na = np.ones(300 * 1024**2 // 8)")
    worker = _fresh_snapshot(h.kc)
    snapshot = _snapshot_of(h.kc, worker)
    execute_ok(h.kc, "a += 1")
    status = _status_says(h.kc, "the cells rewrote 3")
    assert "Snapshots are on. The latest holds the state before cell [2]" in status, status
    with pytest.raises(AssertionError, match="timed out"):  # none replaces it meanwhile
        wait_for(lambda: _children(worker) - {snapshot}, 1.5)
    assert _children(worker) == {snapshot}
    relay.track(h)
    _crash(h, SEGFAULT, worker)
    assert evaluate(h.kc, "float(a[0])") == "1.0"  # the older state: before the rewrite


#: %snapshot's account of what the latest snapshot cost (snapshot.py, Snapshots.status)
COST = re.compile(r"The next is taken once the cells have run ([\d.]+) s since it \(([\d.]+) s so far\) and "
                  r"([\d.]+) s after it at the soonest, to keep snapshots to ([\d.]+)% of the cells' time and "
                  r"of the session's \(Supervisor\.snapshot_cost_share\): it cost ~(\d+) ms, its fork and "
                  r"exit (\d+) ms and (\d+) page faults in the cells since \(([\d.]+) µs each")


def _cost(kc: Any) -> tuple[float, ...]:
    """%snapshot's figures: cells' time wanted and run so far, interval, share (%), cost, fixed, faults,
    µs each."""
    status = _status_says(kc, "page faults in the cells since")
    match = COST.search(status)
    assert match, status
    return tuple(float(g) for g in match.groups())


def test_the_next_snapshot_waits_until_the_cells_ran_40_times_its_cost(relay) -> None:
    """What a snapshot costs the cells is a page fault for each page they write after it
    (~8 µs each to the cells, not the ~1 µs of copying 4 KiB).  After a cell that rewrites
    16 MiB the snapshot shares (4,096 faults, ≥ 33 ms), the next waits until the cells ran
    ≥ 1.3 s (2.5 % of their time): not after any quiet, but after a cell that long."""
    h = relay.start(KERNEL_NAME)
    execute_ok(h.kc, "import numpy as np\na = np.ones(16 * 1024**2 // 8)")
    worker = _fresh_snapshot(h.kc)
    snapshot = _snapshot_of(h.kc, worker)
    execute_ok(h.kc, "a += 1")
    needed, so_far, interval, share, cost, fixed, faults, each = _cost(h.kc)
    assert share == 2.5 and faults >= 4096 and each >= 8.0, (share, faults, each)
    assert cost >= fixed + faults * each / 1000 - 1 and fixed > 0, (cost, fixed)
    assert needed >= max(1.3, faults * each / 1e6 / 0.025 - 0.1) and so_far < needed, (needed, so_far)
    assert interval >= cost / 1000 / 0.025 - 0.1, (interval, cost)
    with pytest.raises(AssertionError, match="timed out"):  # quiet alone takes no new one
        wait_for(lambda: _children(worker) - {snapshot}, interval + 1.0)
    execute_ok(h.kc, f"import time; time.sleep({needed + 0.2})")  # the cells have run long enough
    wait_for(lambda: _children(worker) - {snapshot}, 10.0)


def test_a_higher_cost_share_takes_snapshots_closer_together(relay) -> None:
    """Supervisor.snapshot_cost_share=0.5: the same 16 MiB rewrite wants 20 times less of
    the cells' time, and a 0.3 s cell is enough for the next snapshot."""
    h = relay.start(install_spec("relaykernel-snapshot-share", ("--Supervisor.snapshot_cost_share=0.5",)))
    execute_ok(h.kc, "import numpy as np\na = np.ones(16 * 1024**2 // 8)")
    worker = _fresh_snapshot(h.kc)
    snapshot = _snapshot_of(h.kc, worker)
    execute_ok(h.kc, "a += 1")
    needed, _, interval, share, _, _, faults, each = _cost(h.kc)
    assert share == 50.0, share
    assert needed == pytest.approx(faults * each / 1e6 / 0.5, abs=0.06) and needed < 0.3, (needed, faults, each)
    execute_ok(h.kc, "import time; time.sleep(0.3)")
    wait_for(lambda: _children(worker) - {snapshot}, interval + 10.0)


def test_snapshot_now_takes_one_whatever_the_last_cost(relay) -> None:
    """``%snapshot now`` before a risky cell: the snapshot comes after it, though the
    last one's cost would hold the next back, and a crash rolls back to it."""
    h = relay.start(KERNEL_NAME)
    execute_ok(h.kc, "import numpy as np\na = np.ones(16 * 1024**2 // 8)\nn = 41")
    worker = _fresh_snapshot(h.kc)
    snapshot = _snapshot_of(h.kc, worker)
    execute_ok(h.kc, "a += 1\nn = 42")
    needed, so_far, *_ = _cost(h.kc)
    assert so_far < needed, (needed, so_far)
    reply, iopub = _run_all_iopub(h.kc, "%snapshot now")
    assert reply["content"]["status"] == "ok", reply["content"]
    assert "A snapshot is taken once this cell is done" in stream_text(iopub, "stdout")
    wait_for(lambda: _children(worker) - {snapshot}, 10.0)
    relay.track(h)
    text = _report(_crash(h, SEGFAULT, worker))
    assert re.search(r"Rolled back to the state before cell \[\d+\]:", text), text  # one cell: no range
    assert evaluate(h.kc, "(n, float(a[0]))") == "(42, 2.0)"  # the state after the rewrite
    restored = _worker_pid(h.kc)  # its first snapshot comes unasked, as a new worker's does
    wait_for(lambda: _children(restored), 10.0)


def _children(pid: int) -> set[int]:
    return {c.pid for c in psutil.Process(pid).children() if c.status() != psutil.STATUS_ZOMBIE}


def test_the_random_module_goes_on_where_the_snapshot_was(relay) -> None:
    """random.py reseeds its generator in a forked child: a restored worker must give
    the sequence the seeded state would have given, as before the crashed cell."""
    h = relay.start(KERNEL_NAME)
    execute_ok(h.kc, "import random\nrandom.seed(7)\nfirst = [random.random() for _ in range(3)]\nrandom.seed(7)")
    worker = _fresh_snapshot(h.kc)
    relay.track(h)
    _crash(h, "[random.random() for _ in range(5)]\n" + SEGFAULT, worker)
    assert evaluate(h.kc, "[random.random() for _ in range(3)] == first") == "True"


#: the end of NEAR_THE_LIMIT for the soft limit: interrupted, the cell frees its filler
#: NEAR_THE_LIMIT, its fill freed as the cell ends, however the MemoryError lands: an
#: interrupt between the fill's assignment and a ``try`` after it would keep the fill
#: (1 GB) in the namespace, as the soft limit keeps every variable, and the idle worker
#: would stay over the limit with its snapshot.
NEAR_THE_LIMIT_FREED_AT_THE_END = NEAR_THE_LIMIT.replace(
    "_fill = np.ones((1024**3 - 24 * 1024**2 - _rss) // 8)\nimport time; time.sleep(5)\n",
    "import time\ntry:\n    _fill = np.ones((1024**3 - 24 * 1024**2 - _rss) // 8)\n    time.sleep(5)\n"
    "finally:\n    _fill = None\n")


@pytest.mark.slow
def test_a_cell_near_the_soft_limit_gets_a_memory_error_and_the_snapshot_stays(relay) -> None:
    """The same with the soft limit: the cell that used up the worker's share is
    interrupted with a MemoryError, and the worker keeps both its variables and its
    snapshot (dropped instead, the next crash would find nothing to roll back to).
    The cell frees what it grew by as it ends: an idle worker still over the soft limit
    with its snapshot would have the snapshot dropped (it is no cell's to stop)."""
    h = relay.start(install_spec("relaykernel-snapshot-near-soft", ("--Supervisor.memory_soft_limit=1",)))
    execute_ok(h.kc, "import numpy as np\na = np.ones(64 * 1024**2 // 8)\nn = 41")
    worker = _fresh_snapshot(h.kc)
    snapshot = _snapshot_of(h.kc, worker)
    assert NEAR_THE_LIMIT_FREED_AT_THE_END != NEAR_THE_LIMIT
    reply, _ = execute(h.kc, NEAR_THE_LIMIT_FREED_AT_THE_END)
    assert reply["content"]["ename"] == "MemoryError", reply["content"]
    assert _alive(snapshot) and _worker_pid(h.kc) == worker
    relay.track(h)
    _crash(h, SEGFAULT, worker)
    assert evaluate(h.kc, "(n, float(a[0]))") == "(41, 1.0)"


#: 100 MB freed in the middle of the heap (1 kB buffers: glibc serves them from its
#: heap; ``keep``, allocated after them, stops the heap's top from being trimmed).
FREE_HEAP = "blocks = [bytearray(1000) for _ in range(100_000)]\nkeep = bytearray(1000)\ndel blocks"


def test_a_snapshot_does_not_hold_the_heap_the_worker_had_free(relay) -> None:
    """The next cell reuses the heap's free chunks: the snapshot must not end up with a
    copy of each page it writes (the worker trims its heap before it forks)."""
    h = relay.start(KERNEL_NAME)
    execute_ok(h.kc, FREE_HEAP)
    worker = _fresh_snapshot(h.kc)
    snapshot = _snapshot_of(h.kc, worker)
    msg_id = h.kc.execute("blocks = [bytearray(1000) for _ in range(100_000)]\n"
                          "print('reused', flush=True)\nimport time; time.sleep(30)")
    deadline = Deadline(10.0)
    while True:
        msg = h.kc.get_iopub_msg(timeout=deadline.remaining())
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    own = psutil.Process(snapshot).memory_full_info().uss
    h.km.interrupt_kernel()
    assert get_reply(h.kc, msg_id)["content"]["ename"] == "KeyboardInterrupt"
    assert own < 30 * 1024**2, f"the snapshot holds {own / 1024**2:.0f} MB of its own"


def test_the_worker_keeps_its_free_heap_through_a_snapshot(relay) -> None:
    """The snapshot's child, not the worker, gives the free heap back: the worker keeps
    those pages (the next cells reuse them without a fresh page each, which cost the
    cells of benchmarks/notebook.py ~10 % of their CPU) and the snapshot holds none."""
    h = relay.start(KERNEL_NAME)
    execute_ok(h.kc, FREE_HEAP)
    worker = _worker_pid(h.kc)
    before = psutil.Process(worker).memory_info().rss
    worker = _fresh_snapshot(h.kc)
    snapshot = _snapshot_of(h.kc, worker)
    wait_for(lambda: psutil.Process(snapshot).memory_full_info().uss < 30 * 1024**2, 10.0)
    after = psutil.Process(worker).memory_info().rss
    assert after > before - 30 * 1024**2, f"the worker gave back {(before - after) / 1024**2:.0f} MB"


#: A snapshot forked right before the worker dies, whose SNAPSHOT never reaches the
#: supervisor (lost with the worker): take() is called from the cell with the link's send
#: turned off for it, then the worker exits.  STALE_AFTER is shortened for the test.
FORK_UNKNOWN_AND_DIE = """\
import os, relaykernel.worker.snapshot as _s
_s.STALE_AFTER = 1.0
_snap = _s.current
_snap._back_off = lambda: False
_snap.kernel.link.send = lambda *args, **kwargs: None
_snap.take()
del _snap.kernel.link.send
print('stale', _snap._child, flush=True)
os._exit(3)
"""


def test_a_snapshot_the_supervisor_never_learned_of_exits_on_its_own(relay) -> None:
    """The worker forks a snapshot and dies before the supervisor hears of it: nobody
    will wake that snapshot, so it must not sleep until the supervisor exits (it held
    the worker's whole state, uncounted by the memory limits): once its worker is gone
    and STALE_AFTER passes without a wake, it exits."""
    h = relay.start(KERNEL_NAME)
    execute_ok(h.kc, "n = 41")
    worker = _fresh_snapshot(h.kc)
    reply, outputs = execute(h.kc, FORK_UNKNOWN_AND_DIE)
    assert reply["content"]["ename"] == "WorkerDied", reply["content"]
    found = re.search(r"stale (\d+)", stream_text(outputs))
    assert found, outputs
    stale = int(found.group(1))
    assert stale != worker
    wait_for(lambda: not _alive(stale), 10.0)
    assert evaluate(h.kc, "1 + 1") == "2"  # the kernel goes on (with today's empty worker)


def test_a_new_snapshot_does_not_wait_for_the_old_ones_exit(tmp_path, monkeypatch) -> None:
    """take() kills the previous snapshot and forks the next without waiting in wait4 for
    the old one's exit (unmapping what it shared with the worker: tens of ms of the
    worker's time); a thread of its own reaps it, so no zombie stays.  Snapshots driven
    directly, with a stand-in for the worker's kernel."""
    import threading
    from types import SimpleNamespace

    from relaykernel.worker import snapshot

    parent = os.getpid()
    shell = SimpleNamespace(execution_count=1, user_ns={}, user_ns_hidden={})
    kernel = SimpleNamespace(link=SimpleNamespace(send=lambda *args, **kwargs: None), flush_streams=lambda: None,
                             fd_capture=None, stderr=None, shell=shell,
                             subshells=SimpleNamespace(busy=lambda: False))
    snaps = snapshot.Snapshots(kernel, str(tmp_path), parent, True)  # type: ignore[arg-type]
    monkeypatch.setattr(snaps, "_back_off", lambda: False)
    monkeypatch.setattr(snaps, "_unsafe", lambda: "")  # pytest's own threads are no user's
    blocked: list[int] = []
    real_wait4 = os.wait4

    def wait4(pid: int, options: int) -> Any:
        if options == 0 and threading.current_thread() is threading.main_thread():
            blocked.append(pid)
        return real_wait4(pid, options)

    pids = []
    try:
        monkeypatch.setattr(os, "wait4", wait4)
        for _ in range(2):
            snaps._dirty = True
            if snaps.take() is not None:  # in a snapshot's child: never woken here
                os._exit(0)
            pids.append(snaps._child)
        assert blocked == [], f"take() waited for the old snapshot {blocked} in the worker's main thread"
        wait_for(lambda: pids[0] not in snaps._ending, 10.0)  # reaped by the reaper thread
        with pytest.raises(ChildProcessError):
            os.waitpid(pids[0], os.WNOHANG)
        assert _alive(pids[1])
    finally:
        if os.getpid() != parent:
            os._exit(0)
        monkeypatch.undo()
        snaps.drop()
    assert not _alive(pids[1])


#: Where the worker's buffer for large request buffers lies (the view taken is released).
WARM_BUFFER_ADDRESS = """(lambda b: (lambda c: (__import__('ctypes').addressof(c), c.__class__)[0])(
    __import__('ctypes').c_char.from_buffer(b)))(get_ipython().kernel.link.shared._warm[0])"""


def test_a_snapshot_holds_neither_the_shared_region_nor_the_large_buffers(relay) -> None:
    """A request's large buffers come through the supervisor's shared region into buffers
    the worker keeps warm (relaykernel/transport.py): the snapshot's child lets go of
    both right after the fork, so it holds no copy of them and the worker's next large
    buffer lands in pages of its own, not ones it shares copy-on-write."""
    from tests.kernel.comm_helpers import ECHO_TARGET, comm_open, new_comm_id

    h = relay.start(KERNEL_NAME)
    execute_ok(h.kc, ECHO_TARGET)
    comm_id = new_comm_id()
    handled(h.kc, comm_open(h.kc, comm_id, "echo"))
    payload = os.urandom(8 << 20)
    echo = [m for m in comms_of(handled(h.kc, comm_msg(h.kc, comm_id, {}, buffers=[payload]), timeout=60),
                                "comm_msg", comm_id)]
    assert [bytes(b) for b in echo[0]["buffers"]] == [payload]
    execute_ok(h.kc, "n = 41")
    worker = _fresh_snapshot(h.kc)
    snapshot = _snapshot_of(h.kc, worker)

    def maps(pid: int) -> str:
        with open(f"/proc/{pid}/maps") as f:
            return f.read()

    assert "relaykernel-link" in maps(worker)
    wait_for(lambda: "relaykernel-link" not in maps(snapshot), 10.0)
    address = int(evaluate(h.kc, WARM_BUFFER_ADDRESS))

    def mapped(pid: int) -> bool:
        for line in maps(pid).splitlines():
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start <= address < end:
                return True
        return False

    assert mapped(worker)
    assert not mapped(snapshot), "the snapshot still maps the worker's buffer for large ones"
    payload = os.urandom(8 << 20)
    echo = comms_of(handled(h.kc, comm_msg(h.kc, comm_id, {}, buffers=[payload]), timeout=60), "comm_msg", comm_id)
    assert [bytes(b) for b in echo[0]["buffers"]] == [payload]


def test_a_large_buffer_the_worker_sent_leaves_snapshots_on(relay) -> None:
    """pyzmq starts a thread of its own (its garbage collector) at the first large frame
    the worker sends without a copy, as a comm's buffers go: it is no user's thread,
    so snapshots go on (they stopped for the rest of the session, "threads the user
    started are running (Thread-1)")."""
    from tests.kernel.comm_helpers import ECHO_TARGET, comm_open, new_comm_id

    h = relay.start(KERNEL_NAME)
    execute_ok(h.kc, ECHO_TARGET)
    comm_id = new_comm_id()
    handled(h.kc, comm_open(h.kc, comm_id, "echo"))
    handled(h.kc, comm_msg(h.kc, comm_id, {}, buffers=[os.urandom(1 << 20)]), timeout=60)
    execute_ok(h.kc, "n = 41")
    _fresh_snapshot(h.kc)
    _, outputs = execute(h.kc, "%snapshot")
    assert "threads the user started" not in stream_text(outputs)
