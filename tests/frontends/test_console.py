"""jupyter console on relaykernel, driven in a real terminal (tmux)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.frontends.procs import find_marked, marked_env, new_marker, reap_marked
from tests.frontends.tmux import TmuxSession, requires_tmux
from tests.kernel.helpers import relaykernel_only, wait_for

pytestmark = [requires_tmux, pytest.mark.slow]

JUPYTER_CONSOLE = [sys.executable, "-m", "jupyter_console"]
PROMPT = r"In \[{n}\]:"


def console_env(marker: str) -> dict[str, str]:
    # a plain terminal; no colour escapes from the kernel's tracebacks to match around
    return marked_env(marker, TERM="xterm")


@pytest.fixture
def console(tmp_path: Path) -> Iterator[TmuxSession]:
    """``jupyter console --kernel relaykernel`` in a tmux pane, at its first prompt."""
    marker = new_marker()
    session = TmuxSession([*JUPYTER_CONSOLE, "--kernel", "relaykernel", "--simple-prompt"],
                          env=console_env(marker), cwd=str(tmp_path))
    try:
        session.wait_for(PROMPT.format(n=1), timeout=60)
        session.remember_processes()
        session.marker = marker  # type: ignore[attr-defined]
        yield session
    finally:
        session.close()
        reap_marked(marker)


def run(console: TmuxSession, code: str, n: int, timeout: float = 30.0) -> str:
    """Type ``code`` at prompt ``n``; return the screen text from the input to the next prompt."""
    start = console.mark()
    console.send(code)
    console.wait_for(PROMPT.format(n=n + 1), timeout=timeout, after=start)
    return console.screen()[start:]


def test_console_print_error_input_and_exit(console: TmuxSession):
    out = run(console, "print('hel' + 'lo')", 1)
    assert "\nhello\n" in out

    out = run(console, "6 * 7", 2)
    assert "Out[2]: 42" in out

    out = run(console, "1/0", 3)
    assert "ZeroDivisionError" in out
    assert "division by zero" in out

    # stdin: the console answers the kernel's input_request
    start = console.mark()
    console.send("name = input('name? '); print('hi', name)")
    console.wait_for(r"name\? ", timeout=30, after=start)
    console.send("relay")
    console.wait_for(PROMPT.format(n=5), timeout=30, after=start)
    assert "hi relay" in console.screen()[start:]

    # exit shuts the kernel down: every process of it goes away
    marker = console.marker  # type: ignore[attr-defined]
    kernel_procs = [p for p in find_marked(marker)
                    if p.pid not in (console.server_pid, console.pane_pid)]
    assert kernel_procs, "found no kernel processes started by the console"
    console.send("exit")
    _gone, alive = psutil.wait_procs(kernel_procs, timeout=20)
    assert not alive, f"processes left after `exit` in jupyter console: {alive}"
    wait_for(console.pane_dead, timeout=20, what="jupyter console to exit")


def test_console_ctrl_c_interrupts(console: TmuxSession, tmp_path: Path):
    started = tmp_path / "sleeping"
    start = console.mark()
    # The cell touches a file once it is running: jupyter console may show a cell's output
    # only at its end (it can take a stale 'idle' status for the cell's own), so the screen
    # cannot tell us the sleep has begun.
    console.send(f"import time; open({str(started)!r}, 'w').close(); time.sleep(30); "
                 "print('not ' + 'interrupted')")
    wait_for(started.exists, timeout=30, what="the cell to start sleeping")
    console.key("C-c")
    console.wait_for("KeyboardInterrupt", timeout=20, after=start)
    console.wait_for(PROMPT.format(n=2), timeout=20, after=start)
    out = console.screen()[start:]
    assert "\nnot interrupted" not in out
    # the kernel keeps working (and kept its state)
    out = run(console, "x = 21; print('after', x * 2)", 2)
    assert "after 42" in out
    out = run(console, "time.sleep(0.1); x", 3)
    assert "Out[3]: 21" in out


@relaykernel_only
def test_console_survives_worker_crash_with_the_session_rolled_back(console: TmuxSession):
    """Issue 18 as a console user sees it: data defined, the worker crashes, the next
    cell still sees the data (the snapshot taken after cell 1 took over)."""
    out = run(console, "y = [1, 2, 3]; import os; print('worker', os.getpid())", 1)
    worker = int(re.search(r"worker (\d+)", out).group(1))

    def snapshot_taken() -> bool:  # the worker's one child is its snapshot
        children = psutil.Process(worker).children()
        return any(c.status() != psutil.STATUS_ZOMBIE for c in children)

    wait_for(snapshot_taken, 30, what="the worker's snapshot after cell 1")
    out = run(console, "y.append(4); os._exit(1)", 2, timeout=60)
    assert "WorkerDied: the worker process ended" in out
    assert "Rolled back to the state before cell [2]" in out
    out = run(console, "print(1 + 1)", 3)
    assert "\n2" in out
    out = run(console, "y", 4)
    assert "Out[4]: [1, 2, 3]" in out  # as before the crashed cell
