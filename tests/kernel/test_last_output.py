"""What a cell wrote just before its worker died still reaches the frontend.

Two ways it used to be lost:

* native code writes to fd 2 and aborts (a failed C assertion, a CUDA error):
  the bytes sat in the capture pipe, and the worker's reader thread died before
  forwarding them.  The supervisor now holds the pipes open (/proc/PID/fd) and
  reads what is left after the death.  (What the reader thread took already
  joins the stream's batch, which may still die unsent within its 50 ms.);
* ``print(...); os._exit(n)``: the text was in the stream's batch, or queued in
  zmq, when the process ended.  ``os._exit`` in the worker now flushes first
  (not in forked children, which multiprocessing ends with ``os._exit``);
* a line printed before a native call that segfaults within the batch's 50 ms:
  the first line after a quiet spell now leaves at once.

The text comes before the crash report, under the cell that wrote it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.kernel.helpers import (
    evaluate,
    execute,
    execute_ok,
    relaykernel_only,
)

pytestmark = relaykernel_only


def _crash(kc: Any, code: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The crash's reply, and the streams published before the crash report (the
    worker's last words from faulthandler, or else the cell's WorkerDied error)."""
    reply, iopub = execute(kc, code, timeout=60)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "WorkerDied", reply["content"]
    streams = []
    for m in iopub:
        if m["msg_type"] == "error" or (m["msg_type"] == "stream" and "died" in m["content"]["text"]):
            return reply, streams
        if m["msg_type"] == "stream":
            streams.append((m["content"]["name"], m["content"]["text"]))
    raise AssertionError(f"no crash report: {iopub}")


@pytest.mark.parametrize("death", [
    "os.abort()",
    "ctypes.string_at(0)",  # segfault
])
def test_native_output_right_before_a_crash_is_shown(kernel, death):
    """The crash comes before the worker's pipe reader thread ran: holding its lock
    makes that certain (a reader that already took the bytes still loses them,
    as before, when the batch they joined dies unsent)."""
    code = ("import ctypes, os\n"
            "get_ipython().kernel.fd_capture._lock.acquire()\n"
            "os.write(1, b'native stdout: step 3 of 5\\n')\n"
            "os.write(2, b'native stderr: Assertion `n > 0` failed.\\n')\n"
            f"{death}\n")
    _, before = _crash(kernel.kc, code)
    streams = before
    assert ("stdout", "native stdout: step 3 of 5\n") in before, streams
    assert "native stderr: Assertion `n > 0` failed.\n" in "".join(t for n, t in before if n == "stderr"), streams
    assert evaluate(kernel.kc, "'alive'") == "'alive'"


def test_print_then_os_exit_shows_the_print(kernel):
    code = ("import os, sys\n"
            "print('python stdout before exit')\n"
            "sys.stderr.write('python stderr before exit\\n')\n"
            "os._exit(3)\n")
    reply, streams = _crash(kernel.kc, code)
    text = {name: "".join(t for n, t in streams if n == name) for name in ("stdout", "stderr")}
    assert text == {"stdout": "python stdout before exit\n", "stderr": "python stderr before exit\n"}, streams
    assert "exit code 3" in reply["content"]["evalue"]


def test_forked_children_still_exit_at_once(kernel):
    """os._exit in a forked child is the real one: it neither flushes nor touches the link."""
    kc = kernel.kc
    worker = kernel.worker_pid()
    _, iopub = execute_ok(kc, "import os\n"
                              "pid = os.fork()\n"
                              "if pid == 0:\n"
                              "    os._exit(7)\n"
                              "print('child exit status', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    assert "child exit status 7\n" in "".join(m["content"]["text"] for m in iopub if m["msg_type"] == "stream")
    _, iopub = execute_ok(kc, "from multiprocessing import get_context\n"
                              "with get_context('fork').Pool(2) as pool:\n"
                              "    print(pool.map(abs, [-1, -2, -3]))\n", timeout=60)
    assert "[1, 2, 3]\n" in "".join(m["content"]["text"] for m in iopub if m["msg_type"] == "stream")
    assert kernel.worker_pid() == worker


def test_a_line_printed_after_a_quiet_spell_survives_a_crash_soon_after(kernel):
    """``print(...)`` then native code that segfaults: the batch would die with the
    worker, so the first line after a quiet spell is sent at once.  The cell stops the
    timed flush (the link thread's ticker) so that only that rule can send it."""
    code = ("import ctypes, sys, time\n"
            "sys.stdout.flush_if_due = lambda now: None\n"
            "time.sleep(0.2)\n"  # quiet
            "print('processing', 'file-17')\n"
            "time.sleep(0.3)\n"  # the line leaves the IO thread meanwhile
            "ctypes.string_at(0)\n")
    _, streams = _crash(kernel.kc, code)
    assert ("stdout", "processing file-17\n") in streams, streams


def test_a_print_loop_still_batches(kernel):
    """Only the first line after a quiet spell leaves alone: 2,000 quick lines come in a
    few messages, whole and in order."""
    _, iopub = execute_ok(kernel.kc, "for i in range(2000): print(i)")
    texts = [m["content"]["text"] for m in iopub if m["msg_type"] == "stream"]
    assert "".join(texts) == "".join(f"{i}\n" for i in range(2000))
    assert len(texts) <= 20, len(texts)
