"""Connection helpers: %connect_info, relaykernel.get_connection_*, jupyter console --existing."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import psutil
import pytest

from tests.frontends.procs import marked_env, new_marker, reap_marked
from tests.frontends.tmux import TmuxSession, requires_tmux
from tests.kernel.helpers import (
    KernelHandle,
    evaluate,
    execute,
    execute_ok,
    relaykernel_only,
    stream_text,
    wait_for,
)


def _connection_file(kernel: KernelHandle) -> dict:
    return json.loads(Path(kernel.km.connection_file).read_text())


def test_connect_info_magic(kernel: KernelHandle):
    _, iopub = execute_ok(kernel.kc, "%connect_info")
    text = stream_text(iopub)
    # the JSON block comes first and is the connection file's content
    decoder = json.JSONDecoder()
    info, _end = decoder.raw_decode(text.lstrip())
    expected = _connection_file(kernel)
    for key in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port", "ip",
                "transport", "signature_scheme", "key"):
        assert info[key] == expected[key], key
    assert "jupyter console --existing" in text or "jupyter <app> --existing" in text


@relaykernel_only
def test_connect_info_magic_names_the_file(kernel: KernelHandle):
    _, iopub = execute_ok(kernel.kc, "%connect_info")
    text = stream_text(iopub)
    path = str(Path(kernel.km.connection_file).resolve())
    assert f"jupyter console --existing {path}" in text
    assert not [m for m in iopub if m["msg_type"] == "error"]
    # %connect_info is documented (%magic? / %lsmagic)
    _, iopub = execute_ok(kernel.kc, "%lsmagic")
    lsmagic = [m for m in iopub if m["msg_type"] == "execute_result"]
    assert "%connect_info" in lsmagic[0]["content"]["data"]["text/plain"]


@relaykernel_only
def test_get_connection_file_and_info(kernel: KernelHandle):
    kc = kernel.kc
    path = ast.literal_eval(evaluate(kc, "__import__('relaykernel').get_connection_file()"))
    assert Path(path).resolve() == Path(kernel.km.connection_file).resolve()
    assert path == ast.literal_eval(
        evaluate(kc, "__import__('os').environ['RELAYKERNEL_CONNECTION_FILE']"))

    _, iopub = execute_ok(kc, "import relaykernel\nprint(relaykernel.get_connection_info())")
    assert json.loads(stream_text(iopub)) == _connection_file(kernel)
    _, iopub = execute_ok(
        kc, "info = relaykernel.get_connection_info(unpack=True)\nprint(type(info).__name__, info['shell_port'])")
    assert stream_text(iopub) == f"dict {_connection_file(kernel)['shell_port']}\n"


@relaykernel_only
def test_connection_file_survives_worker_crash(kernel: KernelHandle):
    kc = kernel.kc
    before = evaluate(kc, "__import__('relaykernel').get_connection_file()")
    reply, _ = execute(kc, "import os; os._exit(1)", timeout=60)
    assert reply["content"]["ename"] == "WorkerDied"
    assert evaluate(kc, "__import__('relaykernel').get_connection_file()") == before
    _, iopub = execute_ok(kc, "%connect_info")
    assert "--existing" in stream_text(iopub)


@pytest.mark.slow
@requires_tmux
def test_jupyter_console_existing(kernel: KernelHandle, tmp_path: Path):
    """A second frontend attaches with the command %connect_info prints and shares the kernel."""
    kc = kernel.kc
    execute_ok(kc, "shared = 'set by the first client'")
    _, iopub = execute_ok(kc, "%connect_info")
    # relaykernel prints `jupyter console --existing <path>`; ipykernel `jupyter <app> ...`
    files = [f for f in re.findall(r"jupyter (?:console|<app>) --existing (\S+)",
                                   stream_text(iopub)) if f != "<file>"]
    assert files, stream_text(iopub)
    connection_file = files[-1]
    if not Path(connection_file).is_absolute():  # the short form, relative to the runtime dir
        connection_file = kernel.km.connection_file

    marker = new_marker()
    console = TmuxSession(
        [sys.executable, "-m", "jupyter_console", "--existing", connection_file, "--simple-prompt"],
        env=marked_env(marker, TERM="xterm"), cwd=str(tmp_path))
    try:
        console.wait_for(r"In \[\d+\]:", timeout=60)
        start = console.mark()
        console.send("print(shared.upper()); answer = 6 * 7")
        console.wait_for("SET BY THE FIRST CLIENT", timeout=30, after=start)
        console.wait_for(r"In \[\d+\]:", timeout=30, after=start + 1)
        # what the console did is visible to the first client: same kernel
        wait_for_answer = evaluate(kc, "answer")
        assert wait_for_answer == "42"
        # leaving an attached console with Ctrl-D keeps the kernel running
        # (`exit` would run in the kernel and ask the console to shut it down)
        start = console.mark()
        console.key("C-d")
        console.wait_for(r"exit \(\[y\]/n\)\?", timeout=30, after=start)
        console.send("y")
        wait_for(console.pane_dead, timeout=30, what="jupyter console to exit")
        assert "keeping kernel alive" in console.screen()
        assert "Shutting down kernel" not in console.screen()
        assert psutil.pid_exists(kernel.pid)
        assert evaluate(kc, "answer + 1") == "43"
    finally:
        console.close()
        killed = reap_marked(marker)
    # the console started no kernel of its own
    assert not [p for p in killed if p not in (console.server_pid, console.pane_pid)]


def test_exit_keep_kernel(kernel: KernelHandle):
    reply, _ = execute_ok(kernel.kc, "exit(keep_kernel=True)")
    assert {"source": "ask_exit", "keepkernel": True} in reply["content"]["payload"]
