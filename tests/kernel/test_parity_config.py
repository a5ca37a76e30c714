"""IPython configuration given to the kernel reaches the shell that runs cells, as
under ipykernel: IPython options on the kernel's command line, the profile
(``--profile``, ``--profile-dir``), its ``ipython_config.py`` and
``ipython_kernel_config.py``, its startup files, ``exec_lines`` and
``extensions``; and a worker that replaces a crashed one is configured the same.
Also: the kernel's command line is checked, an unknown option ends it at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from jupyter_client.connect import write_connection_file

from tests.conftest import kernel_argv
from tests.kernel.helpers import (
    evaluate,
    execute,
    relaykernel_only,
    start_kernel,
    stop_kernel,
)

#: what each source of configuration sets, and how a cell sees it
CHECKS = {
    "command line": ("get_ipython().history_manager.hist_file", "':memory:'"),
    "ipython_config.py": ("get_ipython().InteractiveTB.mode", "'Plain'"),
    "ipython_kernel_config.py exec_lines": ("from_exec_lines", "'exec_lines'"),
    "startup file": ("from_startup", "'startup'"),
    "extension": ("get_ipython().h6_extension_loaded", "True"),
}


def _profile(location: Path, tmp: Path) -> dict[str, str]:
    """Fill a profile directory; return the environment that makes its extension importable."""
    (location / "startup").mkdir(parents=True)
    (location / "startup" / "00-first.py").write_text("from_startup = 'startup'\n")
    (location / "ipython_config.py").write_text("c.InteractiveShell.xmode = 'Plain'\n")
    (location / "ipython_kernel_config.py").write_text(textwrap.dedent("""\
        c.InteractiveShellApp.exec_lines = ["from_exec_lines = 'exec_lines'"]
        c.InteractiveShellApp.extensions = ["h6_extension"]
        """))
    modules = tmp / "modules"
    modules.mkdir()
    (modules / "h6_extension.py").write_text(
        "def load_ipython_extension(ip):\n    ip.h6_extension_loaded = True\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(modules), os.environ.get("PYTHONPATH", "")]))}


def _install(name: str, extra_argv: list[str]) -> str:
    spec_dir = Path(os.environ["JUPYTER_PATH"]) / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": kernel_argv() + extra_argv, "display_name": name, "language": "python",
            "interrupt_mode": "signal", "metadata": {"debugger": False}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return name


def _assert_configured(kc) -> None:
    seen = {source: evaluate(kc, expr) for source, (expr, _) in CHECKS.items()}
    assert seen == {source: expected for source, (_, expected) in CHECKS.items()}


def test_profile_config_files_startup_and_command_line_reach_the_shell(tmp_path):
    ipython_dir = tmp_path / "ipython"
    env = _profile(ipython_dir / "profile_h6", tmp_path)
    name = _install("h6-profile", ["--profile=h6", "--HistoryManager.hist_file=:memory:"])
    handle = start_kernel(name, env={**env, "IPYTHONDIR": str(ipython_dir)})
    try:
        _assert_configured(handle.kc)
    finally:
        stop_kernel(handle)


@relaykernel_only
def test_a_replacement_worker_has_the_same_configuration(tmp_path):
    """--profile-dir DIR (which ipykernel accepts) and the rest, after a crash too."""
    location = tmp_path / "anywhere"
    env = _profile(location, tmp_path)
    name = _install("h6-profile-dir", ["--profile-dir", str(location), "--HistoryManager.hist_file=:memory:"])
    handle = start_kernel(name, env=env)
    try:
        kc = handle.kc
        _assert_configured(kc)
        reply, _ = execute(kc, "import os; os._exit(1)")
        assert reply["content"]["status"] == "error"
        _assert_configured(kc)
    finally:
        stop_kernel(handle)


def test_an_unknown_option_ends_the_kernel_at_once(tmp_path):
    """Not a kernel that answers kernel_info and never runs a cell (it used to wait
    forever for the worker it had started before parsing): it exits non-zero."""
    connection_file = str(tmp_path / "kernel.json")
    write_connection_file(connection_file)
    argv = [a.replace("{connection_file}", connection_file) for a in kernel_argv()]
    proc = subprocess.Popen([*argv, "--bogus-flag"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(5)
    assert proc.returncode not in (0, None)
    assert b"bogus-flag" in err


def test_profile_dir_is_accepted(tmp_path):
    """``--profile-dir DIR`` starts the kernel (ipykernel accepts it) and the shell uses it."""
    location = tmp_path / "profile_elsewhere"
    location.mkdir()
    name = _install("h6-profile-dir-only", ["--profile-dir", str(location)])
    handle = start_kernel(name)
    try:
        assert evaluate(handle.kc, "get_ipython().profile_dir.location") == repr(str(location))
    finally:
        stop_kernel(handle)

