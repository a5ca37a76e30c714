"""stdout/stderr capture: Python-level, fd-level, subprocesses, threads, flushing."""

from __future__ import annotations

import time
from queue import Empty

from tests.kernel.helpers import (
    Deadline,
    collect_iopub_until_idle,
    execute_ok,
    get_reply,
    of_type,
    parent_id,
    relaykernel_only,
    stream_text,
    wait_for,
)


def test_stdout_and_stderr_streams(kernel):
    _, iopub = execute_ok(
        kernel.kc,
        "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\n"
        "sys.stdout.write('no newline')",
    )
    streams = of_type(iopub, "stream")
    assert {m["content"]["name"] for m in streams} == {"stdout", "stderr"}
    assert stream_text(iopub, "stdout") == "to out\nno newline"
    assert stream_text(iopub, "stderr") == "to err\n"


def test_many_prints_arrive_in_order_before_idle(kernel):
    n = 20_000
    _, iopub = execute_ok(kernel.kc, f"for i in range({n}):\n    print(i)", timeout=90)
    # collect_iopub_until_idle stops at idle: everything must be in before it
    text = stream_text(iopub, "stdout")
    lines = text.splitlines()
    assert len(lines) == n, (len(lines), lines[:3], lines[-3:])
    assert lines == [str(i) for i in range(n)]
    assert stream_text(iopub, "stderr") == ""


def test_fd_level_output_is_captured(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(kc, "import os\nrc = os.system('echo fromfd')\nassert rc == 0")
    assert "fromfd" in stream_text(iopub, "stdout")

    _, iopub = execute_ok(kc, "import os\nos.write(1, b'raw\\n')\nos.write(2, b'rawerr\\n')")
    assert "raw\n" in stream_text(iopub, "stdout")
    assert "rawerr" in stream_text(iopub, "stderr")

    _, iopub = execute_ok(
        kc,
        "import subprocess\n"
        "subprocess.run(['echo', 'sub'], check=True)\n"
        "subprocess.run(['sh', '-c', 'echo suberr >&2'], check=True)",
    )
    assert "sub\n" in stream_text(iopub, "stdout")
    assert "suberr" in stream_text(iopub, "stderr")


def test_fd_output_of_one_cell_does_not_leak_into_next(kernel):
    kc = kernel.kc
    _, iopub1 = execute_ok(kc, "import os\nos.system('echo cell-one')")
    _, iopub2 = execute_ok(kc, "print('cell-two')")
    assert "cell-one" in stream_text(iopub1)
    assert "cell-one" not in stream_text(iopub2)


def test_background_thread_output_arrives_before_idle(kernel):
    _, iopub = execute_ok(
        kernel.kc,
        "import threading, time\n"
        "def worker():\n"
        "    for i in range(3):\n"
        "        print('thread', i, flush=True)\n"
        "        time.sleep(0.05)\n"
        "t = threading.Thread(target=worker)\n"
        "t.start()\n"
        "time.sleep(0.5)\n"
        "t.join()\n"
        "print('main done')",
    )
    text = stream_text(iopub, "stdout")
    for i in range(3):
        assert f"thread {i}\n" in text
    assert text.index("thread 2") < text.index("main done")


def test_output_is_flushed_while_cell_runs(kernel):
    """A print followed by a 2 s sleep: the stream message must arrive long before the reply."""
    kc = kernel.kc
    execute_ok(kc, "import time")  # measure flushing, not the worker's start-up
    msg_id = kc.execute("print('early')\ntime.sleep(2)\n'late'", allow_stdin=False)
    start = time.monotonic()
    got_stream_at = None
    deadline = Deadline(30)
    while got_stream_at is None and not deadline.expired():
        try:
            msg = kc.get_iopub_msg(timeout=min(1.0, deadline.remaining()))
        except Empty:
            continue
        if parent_id(msg) != msg_id:
            continue
        if msg["msg_type"] == "stream" and "early" in msg["content"]["text"]:
            got_stream_at = time.monotonic() - start
        assert not (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
    assert got_stream_at is not None, "no stream message"
    reply = get_reply(kc, msg_id, timeout=30)
    reply_at = time.monotonic() - start
    assert reply["content"]["status"] == "ok"
    assert got_stream_at < 1.0, got_stream_at
    assert reply_at - got_stream_at > 1.0, (got_stream_at, reply_at)
    collect_iopub_until_idle(kc, msg_id)


FORK_POOL = """
import multiprocessing as mp
def square(x):
    print('in child', x)
    return x * x
with mp.get_context('fork').Pool(2) as pool:
    squares = pool.map(square, range(4))
print(squares)
"""

FORK_RAW = """
import os, sys
pid = os.fork()
if pid == 0:
    print('child of fork')
    sys.stdout.flush()
    os._exit(0)
print('child exited', os.waitpid(pid, 0)[1])
"""


@relaykernel_only  # ipykernel: the children's print pieces interleave ("in childin child  10")
def test_forked_children_print_into_the_cell(kernel):
    """multiprocessing's fork start method (Linux's default before Python 3.14):
    the children inherit the worker's streams, whose zmq link they cannot use.
    Their lines reach the cell whole, before idle, and the cell ends (it used
    to hang with the children spinning).  A pool's lines are not ordered against
    the worker's own prints (nor are they by ipykernel): they come by the fd
    pipe; a joined Process's are (next test).  So the cell prints after the pool's
    ``with`` block, which joins its processes: printed while the reader thread still
    forwards a child's line, ``print``'s two writes (text, then newline) took that
    line between them (``[0, 1, 4, 9]in child 2``, seen in CI)."""
    _, iopub = execute_ok(kernel.kc, FORK_POOL, timeout=60)
    lines = stream_text(iopub, "stdout").splitlines()
    assert sorted(lines) == sorted([f"in child {i}" for i in range(4)] + ["[0, 1, 4, 9]"]), lines


def test_os_fork_child_output_reaches_the_cell(kernel):
    _, iopub = execute_ok(kernel.kc, FORK_RAW, timeout=60)
    lines = stream_text(iopub, "stdout").splitlines()
    assert sorted(lines) == ["child exited 0", "child of fork"], lines
    # and the worker carries on
    _, iopub = execute_ok(kernel.kc, "print('after')", timeout=30)
    assert stream_text(iopub, "stdout") == "after\n"


@relaykernel_only
def test_child_program_output_keeps_its_place_among_prints(kernel):
    """What a program run with os.system or subprocess, or a forked Process that
    was joined, wrote comes before what the cell prints after the call returned
    (ipykernel reorders it now and then)."""
    code = ("import os, subprocess, sys, multiprocessing, multiprocess\n"
            "def child(i):\n"
            "    print(f'x{i}')\n"
            "for i in range(15):\n"
            "    print(f'a{i}')\n"
            "    os.system(f'echo b{i}; echo B{i} >&2')\n"
            "    print(f'c{i}')\n"
            "    sys.stderr.write(f'C{i}\\n')\n"
            "    subprocess.run(['echo', f'd{i}'])\n"
            "    print(f'e{i}')\n"
            "    for lib in (multiprocessing, multiprocess):\n"
            "        p = lib.get_context('fork').Process(target=child, args=(i,))\n"
            "        p.start(); p.join()\n"
            "        print(f'y{i}')\n")
    _, iopub = execute_ok(kernel.kc, code, timeout=60)
    assert stream_text(iopub, "stdout").split() == [f"{x}{i}" for i in range(15) for x in "abcdexyxy"]
    assert stream_text(iopub, "stderr").split() == [f"{x}{i}" for i in range(15) for x in "BC"]


def _stream_runs(iopub: list[dict]) -> list[tuple[str, str]]:
    """(stream name, text) of each stream message, in arrival order."""
    return [(m["content"]["name"], m["content"]["text"]) for m in of_type(iopub, "stream")]


def test_stderr_does_not_overtake_earlier_stdout(kernel):
    """Issue 24: three prints, then a warning: the warning came second (stderr's first
    line after a quiet spell left at once, stdout's lines still waited in their batch)."""
    code = "import warnings\nfor i in range(3):\n    print('line', i)\nwarnings.warn('careful')"
    for _ in range(3):
        _, iopub = execute_ok(kernel.kc, code)
        runs = _stream_runs(iopub)
        warned = next(i for i, (name, text) in enumerate(runs) if name == "stderr" and "careful" in text)
        assert "".join(text for name, text in runs[:warned] if name == "stdout") == \
            "line 0\nline 1\nline 2\n", runs


@relaykernel_only  # ipykernel batches each stream apart: it sends 'a c' and 'b d'
def test_output_keeps_written_order_across_stdout_and_stderr(kernel):
    _, iopub = execute_ok(kernel.kc, "import sys\nprint('a')\nprint('b', file=sys.stderr)\n"
                                     "print('c')\nsys.stderr.write('d\\n')\nprint('e')")
    assert _stream_runs(iopub) == [("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "c\n"),
                                   ("stderr", "d\n"), ("stdout", "e\n")]


@relaykernel_only  # ipykernel sends a message per flush, a line each
def test_flushing_every_line_still_batches_and_an_interrupt_stops_it(kernel):
    """Issue 24: ``print(i, flush=True)`` in a loop sent a message per line (~18k a
    second): the supervisor fell behind, and the KeyboardInterrupt came seconds (once
    94 s) after the interrupt.  A flush now asks for a send soon, as in ipykernel."""
    kc = kernel.kc
    msg_id = kc.execute("i = 0\nwhile True:\n    print(i, flush=True)\n    i += 1")
    seen: list[dict] = []

    def lines() -> int:
        return sum(m["content"]["text"].count("\n") for m in seen)

    def printed_a_lot() -> bool:
        try:
            msg = kc.get_iopub_msg(timeout=0.2)
        except Empty:
            return False
        if parent_id(msg) == msg_id and msg["msg_type"] == "stream":
            seen.append(msg)
        return lines() >= 20_000

    wait_for(printed_a_lot, timeout=60, interval=0, what="20,000 printed lines")
    kernel.km.interrupt_kernel()
    reply = get_reply(kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    seen.extend(of_type(collect_iopub_until_idle(kc, msg_id, timeout=30), "stream"))
    assert len(seen) * 100 <= lines(), (len(seen), lines())


def test_stream_has_what_libraries_probe_on_ipykernel_streams(kernel):
    """Issue 17: OutStream lacked ``_is_master_process`` (and parent_header & co)."""
    code = ("import os, sys\n"
            "ip = get_ipython()\n"
            "s = sys.stdout\n"
            "assert s._is_master_process() is True\n"
            "assert s.name == 'stdout' and sys.stderr.name == 'stderr' and s.echo is None\n"
            "assert s.parent_header['msg_id'] == ip.get_parent()['header']['msg_id']\n"
            "assert callable(s.set_parent) and callable(s.set_thread_parent)\n"
            "r, w = os.pipe()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.write(w, b'1' if not s._is_master_process() else b'0')\n"
            "    os._exit(0)\n"
            "os.waitpid(pid, 0)\n"
            "assert os.read(r, 1) == b'1'\n")
    execute_ok(kernel.kc, code, timeout=60)
