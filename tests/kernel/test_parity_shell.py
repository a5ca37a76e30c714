"""The worker's IPython shell behaves like ipykernel's (issues 17 and 24).

Every test here runs against ipykernel too (RELAYKERNEL_TEST_KERNEL=ipykernel)
unless marked otherwise.
"""

from __future__ import annotations

import re
import tempfile

import pytest

from relaykernel.worker.cell_names import source_hash
from tests.kernel.helpers import (
    IS_IPYKERNEL,
    Deadline,
    collect_iopub_until_idle,
    execute,
    execute_ok,
    get_reply,
    of_type,
    outputs,
    relaykernel_only,
    stream_text,
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(traceback: list[str]) -> str:
    return _ANSI.sub("", "\n".join(traceback))


# ------------------------------------------------------------ cell file names
def test_cells_compile_to_files_named_by_the_murmur2_of_their_source(kernel):
    """The name a debugger frontend computes: <tmp>/ipykernel_<pid>/<murmur2(source)>.py
    (relaykernel: the supervisor's pid, so a cell keeps its name in every worker)."""
    kc = kernel.kc
    code = "import os\ndef where():\n    pass\npid = os.getpid()\nfile = where.__code__.co_filename"
    execute_ok(kc, code)
    _, iopub = execute_ok(kc, "print(pid, file, sep='|')")
    pid, file = stream_text(iopub).strip().split("|")
    pid = pid if IS_IPYKERNEL else str(kernel.pid)
    assert file == f"{tempfile.gettempdir()}/ipykernel_{pid}/{source_hash(code)}.py"


def test_a_traceback_shows_the_cell_with_its_layout(kernel):
    """Blank lines and indentation of the cell stay in the traceback, as under ipykernel."""
    reply, iopub = execute(kernel.kc, "def f():\n\n    return 1 / 0\nf()")
    assert reply["content"]["status"] == "error"
    [error] = of_type(iopub, "error")
    text = _plain(error["content"]["traceback"])
    assert re.search(r"^\s+2\s*$", text, re.MULTILINE), text  # the blank line 2 is shown
    assert re.search(r"^-+> 3\s{5}return 1 / 0$", text, re.MULTILINE), text  # with its indentation


def test_qtconsole_magic_is_quiet(kernel):
    """ipykernel's %qtconsole starts a console if it can and says nothing otherwise."""
    reply, iopub = execute(kernel.kc, "%qtconsole")
    assert reply["content"]["status"] == "ok", reply["content"]
    assert outputs(iopub) == []


# ----------------------------------------------------------- display errors
def test_a_result_that_cannot_be_formatted_fails_the_cell(kernel):
    """The error is published and the execute_reply says error, as under ipykernel."""
    kc = kernel.kc
    code = ("class Broken:\n"
            "    def _repr_html_(self):\n"
            "        raise ValueError('no html today')\n"
            "Broken()")
    reply, iopub = execute(kc, code)
    assert reply["content"]["status"] == "error", reply["content"]
    [error] = of_type(iopub, "error")
    assert error["content"]["ename"] == "ValueError"
    assert "no html today" in _plain(error["content"]["traceback"])
    # the next cell is not affected
    reply, _ = execute(kc, "1 + 1")
    assert reply["content"]["status"] == "ok"


def test_a_display_call_that_cannot_be_formatted_does_not_fail_the_cell(kernel):
    """ipykernel fails only a cell whose *result* cannot be formatted; display() goes on."""
    code = ("class Broken:\n"
            "    def _repr_html_(self):\n"
            "        raise ValueError('no html today')\n"
            "display(Broken())\n"
            "print('after')")
    reply, iopub = execute(kernel.kc, code)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert len(of_type(iopub, "error")) == 1
    assert "after" in stream_text(iopub)


# ------------------------------------------------------------------ cell id
def test_pre_run_cell_sees_the_cell_id_from_the_request_metadata(kernel):
    """JupyterLab sends metadata.cellId; pre_run_cell handlers get it as info.cell_id,
    in a plain cell and in one with top-level await."""
    kc = kernel.kc
    execute_ok(kc, "import asyncio\n"
                   "seen = []\n"
                   "get_ipython().events.register('pre_run_cell', "
                   "lambda info: seen.append((info.cell_id, (info.cell_meta or {}).get('cellId'))))")
    for code, cell_id in (("x = 1", "a1b2-plain"), ("await asyncio.sleep(0)", "c3d4-await")):
        msg = kc.session.msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                                 "user_expressions": {}, "allow_stdin": False,
                                                 "stop_on_error": True},
                             metadata={"cellId": cell_id})
        kc.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
        assert get_reply(kc, msg_id)["content"]["status"] == "ok"
        collect_iopub_until_idle(kc, msg_id)
        _, iopub = execute_ok(kc, "print(seen[-2])")  # [-1] is this cell's
        assert stream_text(iopub).strip() == repr((cell_id, cell_id))


# ----------------------------------------------------------------- sys.path
def test_imports_follow_cd(kernel, tmp_path):
    """'' is on sys.path, so after %cd a module there imports, as under ipykernel."""
    kc = kernel.kc
    (tmp_path / "parity_module_here.py").write_text("where = 'next to the notebook'\n")
    execute_ok(kc, f"%cd {tmp_path}")
    _, iopub = execute_ok(kc, "import parity_module_here\nprint(parity_module_here.where)")
    assert stream_text(iopub).strip() == "next to the notebook"


def test_sys_path_has_the_current_directory_where_ipykernel_puts_it(kernel):
    """'' once, right before the first site-packages (after the standard library), and
    not the absolute directory the kernel was started in."""
    code = ("import os, sys\n"
            "site = next(i for i, p in enumerate(sys.path) if os.path.basename(p) == 'site-packages')\n"
            "print(sys.path.count(''), sys.path.index('') == site - 1, os.getcwd() in sys.path)")
    _, iopub = execute_ok(kernel.kc, code)
    assert stream_text(iopub).split() == ["1", "True", "False"]


# --------------------------------------------------------------------- pdb
@pytest.mark.skipif(IS_IPYKERNEL, reason=(
    "deliberate difference: ipykernel 7.4 sends breakpoint() to debugpy's hook, and at a "
    "pdb.set_trace() prompt IPython 9's Pdb.interaction swallows the interrupt, so the "
    "rest of the cell runs and the reply is ok; relaykernel ends the cell"))
def test_an_interrupt_ends_a_cell_stopped_in_breakpoint_and_keeps_the_worker(kernel):
    """Stdlib pdb swallows KeyboardInterrupt at its prompt (the worker was replaced after
    the grace period); the interrupt must end the debugger and the cell
    (KeyboardInterrupt), and keep the variables and the process."""
    kc = kernel.kc
    execute_ok(kc, "import os\nkept = 'still here'\npid = os.getpid()")
    msg_id = kc.execute("x = 1\nbreakpoint()\nx = 2", allow_stdin=True)
    assert "pdb>" in kc.get_stdin_msg(timeout=30)["content"]["prompt"]
    kernel.km.interrupt_kernel()
    reply = get_reply(kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    [error] = of_type(collect_iopub_until_idle(kc, msg_id), "error")
    text = _plain(error["content"]["traceback"])
    assert "----> 2 breakpoint()" in text and "bdb.py" not in text, text  # the cell, not pdb
    _, iopub = execute_ok(kc, "print(kept, x, os.getpid() == pid)")
    assert stream_text(iopub).strip() == "still here 1 True"


def test_pdb_set_trace_prompts_over_stdin_and_continues(kernel):
    """pdb.set_trace() asks its commands with input_request; 'c' lets the cell finish."""
    kc = kernel.kc
    msg_id = kc.execute("import pdb\ny = 1\npdb.set_trace()\ny = 2", allow_stdin=True)
    assert "pdb>" in kc.get_stdin_msg(timeout=30)["content"]["prompt"]
    kc.input("c")
    assert get_reply(kc, msg_id, timeout=30)["content"]["status"] == "ok"
    collect_iopub_until_idle(kc, msg_id)
    _, iopub = execute_ok(kc, "print(y)")
    assert stream_text(iopub).strip() == "2"


# ------------------------------------------------- signal.set_wakeup_fd, trio
def test_user_code_finds_no_wakeup_fd_set(kernel):
    """The process's signal wakeup fd is free for user event loops (trio, asyncio
    signal handlers) while a cell runs, as under ipykernel."""
    code = ("import signal\n"
            "found = signal.set_wakeup_fd(-1)\n"
            "signal.set_wakeup_fd(found)\n"
            "print(found)")
    _, iopub = execute_ok(kernel.kc, code)
    assert stream_text(iopub).strip() == "-1"


def test_trio_runs_without_a_wakeup_fd_collision_and_is_interruptible(kernel):
    """trio.run warns (RuntimeWarning) if a wakeup fd is set already; an interrupt of
    trio.sleep ends the cell with KeyboardInterrupt and keeps the worker."""
    kc = kernel.kc
    code = ("import os, warnings, trio\n"
            "pid = os.getpid()\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    trio.run(trio.sleep, 0)\n"
            "print([str(w.message) for w in caught])")
    _, iopub = execute_ok(kc, code)
    assert stream_text(iopub).strip() == "[]"
    msg_id = kc.execute("trio.run(trio.sleep, 60)")
    # interrupt once the cell is running (its busy status is out)
    deadline = Deadline(30)
    while not deadline.expired():
        msg = kc.get_iopub_msg(timeout=deadline.remaining())
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            break
    kernel.km.interrupt_kernel()
    reply = get_reply(kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    collect_iopub_until_idle(kc, msg_id)
    _, iopub = execute_ok(kc, "print(os.getpid() == pid)")
    assert stream_text(iopub).strip() == "True"


@relaykernel_only
def test_a_user_wakeup_fd_still_hears_signals_while_input_waits(kernel):
    """A cell leaves its own wakeup fd set; while the next cell waits in input(), a
    SIGINT landing on another thread still interrupts it (the worker's wake-up), and
    the user's fd gets the signal's byte too (forwarded), and stays set."""
    kc = kernel.kc
    execute_ok(kc, "import signal, socket, threading, time\n"
                   "mine, theirs = socket.socketpair()\n"
                   "for s in (mine, theirs): s.setblocking(False)\n"
                   "signal.set_wakeup_fd(theirs.fileno(), warn_on_full_buffer=False)")
    code = ("def poke():\n"
            "    time.sleep(0.3)\n"
            "    signal.pthread_kill(threading.get_ident(), signal.SIGINT)\n"
            "threading.Thread(target=poke).start()\n"
            "input('never answered? ')")
    msg_id = kc.execute(code, allow_stdin=True)
    assert kc.get_stdin_msg(timeout=30)["content"]["prompt"] == "never answered? "
    reply = get_reply(kc, msg_id, timeout=15)  # no interrupt_request: nothing replaces the worker
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    collect_iopub_until_idle(kc, msg_id)
    code = ("now = signal.set_wakeup_fd(-1)\n"
            "signal.set_wakeup_fd(now)\n"
            "print(now == theirs.fileno(), signal.SIGINT in mine.recv(64))")
    _, iopub = execute_ok(kc, code)
    assert stream_text(iopub).strip() == "True True"
