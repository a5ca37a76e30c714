"""Cells run inside the worker's asyncio event loop, as under ipykernel.

ipywidgets' documentation and many dashboards start tasks from plain cells
(``asyncio.ensure_future(...)``) and expect them to keep running between
cells; libraries call ``asyncio.get_running_loop()``.  Both need a running
loop around every cell.  Top-level ``await`` runs in that same loop, and an
interrupt cancels an awaiting cell without losing the worker.
Runs on both kernels (RELAYKERNEL_TEST_KERNEL=ipykernel).
"""

from __future__ import annotations

import datetime
import time

from tests.kernel.helpers import (
    collect_iopub_until_idle,
    evaluate,
    execute,
    execute_ok,
    get_reply,
    stream_text,
    wait_for,
)

TICKER = """
import asyncio
ticks = 0
async def tick():
    global ticks
    while True:
        ticks += 1
        await asyncio.sleep(0.02)
ticker = asyncio.ensure_future(tick())
"""


def test_a_task_started_in_a_cell_runs_between_cells(kernel):
    kc = kernel.kc
    execute_ok(kc, TICKER)
    try:
        # between these silent requests the kernel is idle: only its event loop moves the task
        wait_for(lambda: int(evaluate(kc, "ticks")) >= 10, timeout=15, interval=0.1,
                 what="the task to tick ten times between cells")
    finally:
        execute_ok(kc, "ticker.cancel()")


def test_plain_cells_see_a_running_loop(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(kc, "import asyncio\nprint(asyncio.get_running_loop().is_running())")
    assert stream_text(iopub, "stdout") == "True\n"
    # as under ipykernel: a second loop cannot run inside the running one
    reply, _ = execute(kc, "asyncio.run(asyncio.sleep(0))")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "RuntimeError"


def test_top_level_await_and_a_task_it_leaves_behind(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(kc, "import asyncio\nawait asyncio.sleep(0.05)\nprint('awaited')")
    assert stream_text(iopub, "stdout") == "awaited\n"
    execute_ok(kc, "done = []\nasync def later():\n    await asyncio.sleep(0.2)\n    done.append(1)\n"
                   "asyncio.ensure_future(later())\nawait asyncio.sleep(0)")
    wait_for(lambda: evaluate(kc, "done") == "[1]", timeout=15, interval=0.1,
             what="the task left behind to finish between cells")


def test_interrupting_an_awaiting_cell_keeps_the_worker(kernel):
    kc = kernel.kc
    execute_ok(kc, "import asyncio\nkept = 'yes'")
    worker = kernel.worker_pid()
    msg_id = kc.execute("print('waiting', flush=True)\nawait asyncio.sleep(60)")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the cell is awaiting once it printed
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    t0 = time.monotonic()
    kernel.km.interrupt_kernel()
    reply = get_reply(kc, msg_id, timeout=10)
    assert time.monotonic() - t0 < 4  # well inside the supervisor's 5 s grace
    assert reply["content"]["status"] == "error"
    # ipykernel turns the interrupt into a cancellation of the cell's task too
    assert reply["content"]["ename"] in ("CancelledError", "KeyboardInterrupt")
    collect_iopub_until_idle(kc, msg_id)
    assert evaluate(kc, "kept") == "'yes'"
    assert kernel.worker_pid() == worker


def test_execute_reply_metadata_says_when_the_cell_started(kernel):
    """JupyterLab's "record timing" stores ``started`` from the reply's metadata."""
    before = datetime.datetime.now(datetime.timezone.utc)
    reply, _ = execute_ok(kernel.kc, "1")
    metadata = reply["metadata"]
    started = metadata["started"]
    if isinstance(started, str):
        started = datetime.datetime.fromisoformat(started.replace("Z", "+00:00"))
    assert abs((started - before).total_seconds()) < 30
    assert metadata["status"] == "ok"
    assert metadata["dependencies_met"] is True


def test_a_figure_drawn_in_an_awaiting_cell_is_shown(kernel):
    """post_execute (matplotlib-inline's flush) runs after awaiting cells too."""
    code = ("%matplotlib inline\nimport asyncio\nimport matplotlib.pyplot as plt\n"
            "await asyncio.sleep(0)\nplt.plot([1, 2, 3]);")
    _, iopub = execute_ok(kernel.kc, code, timeout=60)
    images = [m for m in iopub if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]]
    assert len(images) == 1, [m["msg_type"] for m in iopub]


def test_a_thread_can_schedule_work_on_the_idle_loop(kernel):
    """run_coroutine_threadsafe from a thread while the kernel waits for requests."""
    kc = kernel.kc
    execute_ok(kc, "import asyncio, threading, time\nloop = asyncio.get_running_loop()\nhits = []\n"
                   "async def note():\n    hits.append(1)\n"
                   "def later():\n    time.sleep(0.3)\n    asyncio.run_coroutine_threadsafe(note(), loop)\n"
                   "threading.Thread(target=later).start()")
    wait_for(lambda: evaluate(kc, "hits") == "[1]", timeout=15, interval=0.1,
             what="the coroutine the thread scheduled to run")
