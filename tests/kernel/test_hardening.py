"""Hardening (issue 21): what a careless user or a large state must not break.

relaykernel only: each test is about the supervisor/worker split (state kept
across worker deaths, the private directory, what the provisioner kills).
"""

from __future__ import annotations

import os
import stat
import subprocess

import psutil
import pytest

from relaykernel.supervisor import private_dir
from tests.kernel import crash_helpers
from tests.kernel.comm_helpers import comm_msg, comms_of, handled
from tests.kernel.crash_helpers import install_spec
from tests.kernel.helpers import (
    evaluate,
    execute,
    execute_ok,
    fork_server,
    of_type,
    pid_exists,
    relaykernel_only,
    stream_text,
    wait_for,
)

pytestmark = relaykernel_only

#: the fixture that starts kernels and checks, at teardown, that none left a process behind
relay = crash_helpers.relay

#: 30 sliders and a 70,000-character text: their states add up to well over the
#: link's 64 KiB packing limit, which once made the whole ADOPT undecodable
MANY_WIDGETS = ("import ipywidgets\n"
                "sliders = [ipywidgets.IntSlider(value=i, max=1000) for i in range(30)]\n"
                "text = ipywidgets.Textarea(value='t' * 70_000)\n")
WIDGET_VALUES = ("repr((sorted(w.value for w in __import__('ipywidgets').Widget.widgets.values()\n"
                 "        if isinstance(w, __import__('ipywidgets').IntSlider)),\n"
                 " [len(w.value) for w in __import__('ipywidgets').Widget.widgets.values()\n"
                 "  if isinstance(w, __import__('ipywidgets').Textarea)]))")


def test_widgets_whose_state_passes_64_kib_survive_a_crash_and_a_restart(relay):
    pytest.importorskip("ipywidgets", minversion="8")
    h = relay.start(install_spec("relaykernel-provisioned"))
    kc = h.kc
    _, iopub = execute_ok(kc, MANY_WIDGETS)
    first = next(m["content"]["comm_id"] for m in comms_of(iopub, "comm_open")
                 if m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"
                 and m["content"]["data"]["state"]["value"] == 0)
    handled(kc, comm_msg(kc, first, {"method": "update", "state": {"value": 500}, "buffer_paths": []}))
    expected = repr(repr((sorted([*range(1, 30), 500]), [70_000])))
    assert evaluate(kc, WIDGET_VALUES) == expected
    relay.track(h)

    reply, _ = execute(kc, "import os; os._exit(1)")
    assert reply["content"]["ename"] == "WorkerDied", reply["content"]
    assert evaluate(kc, WIDGET_VALUES) == expected
    relay.track(h)

    h.km.restart_kernel()
    kc.wait_for_ready(timeout=30)
    assert evaluate(kc, WIDGET_VALUES) == expected
    # and the adopted widgets are live: the frontend moves one, the kernel sees it
    handled(kc, comm_msg(kc, first, {"method": "update", "state": {"value": 7}, "buffer_paths": []}))
    assert evaluate(kc, WIDGET_VALUES) == repr(repr((sorted([*range(1, 30), 7]), [70_000])))
    relay.track(h)


def test_a_forced_shutdown_kills_what_cells_started_after_the_supervisor_died(relay):
    """The supervisor is SIGKILLed (the OOM killer), then shutdown_kernel(now=True): the
    program a cell started is killed all the same, from the groups the workers recorded
    with the provisioner; a recorded group id that is not ours (reused) is left alone."""
    h = relay.start(install_spec("relaykernel-provisioned"))
    child = int(evaluate(h.kc, "__import__('subprocess').Popen(['sleep', '300']).pid"))
    relay.track(h)
    # the provisioner's directory, as the cell's program inherited it
    groups_dir = psutil.Process(child).environ().get("RELAYKERNEL_GROUPS_DIR")
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True, env={"PATH": os.environ["PATH"]})
    try:
        if groups_dir is not None:  # a recorded group whose id was reused by someone else
            open(os.path.join(groups_dir, str(stranger.pid)), "w").close()
        h.process().kill()
        wait_for(lambda: not h.km.is_alive(), 10, what="the supervisor to be dead")
        assert pid_exists(child)  # nobody else kills it
        h.km.shutdown_kernel(now=True)
        wait_for(lambda: not pid_exists(child), 10, what="the cell's sleep to be killed")
        assert stranger.poll() is None, "a group that is not the kernel's was killed"
        assert groups_dir is not None and not os.path.exists(groups_dir)
    finally:
        stranger.kill()
        stranger.wait(10)
        if pid_exists(child):
            psutil.Process(child).kill()


@pytest.mark.parametrize("name", ["stdout", "stderr"])
def test_a_cell_that_sets_a_std_stream_to_none_breaks_no_later_cell(kernel, name):
    """Every later request failed with AttributeError and no traceback.  (ipykernel 7.4
    stops answering altogether: hence relaykernel only.)"""
    kc = kernel.kc
    execute_ok(kc, f"import sys; sys.{name} = None")
    reply, iopub = execute_ok(kc, "print('back'); 6 * 7")
    assert stream_text(iopub) == "back\n"
    assert of_type(iopub, "execute_result")[0]["content"]["data"]["text/plain"] == "42"
    assert f"sys.{name} was None" in stream_text(iopub, "stderr")
    reply, iopub = execute(kc, "1 / 0")
    assert reply["content"]["ename"] == "ZeroDivisionError"
    assert any("ZeroDivisionError" in line for line in of_type(iopub, "error")[0]["content"]["traceback"])
    # a stream redirected somewhere that writes stays redirected, as the user wanted
    _, iopub = execute_ok(kc, f"import io; sys.{name} = kept = io.StringIO()")
    _, iopub = execute_ok(kc, f"print('into the buffer', file=sys.{name})")
    assert "into the buffer" not in stream_text(iopub, name)
    assert evaluate(kc, "kept.getvalue()") == repr("into the buffer\n")


def _private_entries(kernel) -> dict[str, int]:
    """name -> st_mode of every entry of the kernel's private directory, once a spare
    has been forked (so the fork server's socket is there too)."""

    def forked_spare() -> bool:
        server = fork_server(kernel.pid)
        return server is not None and bool(server.children())

    wait_for(forked_spare, 60, what="a spare forked from the fork server")
    directory = next(os.path.dirname(f.path) for f in kernel.process().open_files()
                     if os.path.basename(f.path) == private_dir.LOCK_NAME)
    return {name: os.lstat(os.path.join(directory, name)).st_mode for name in os.listdir(directory)}


def test_crash_logs_of_dead_workers_do_not_pile_up(kernel):
    """One crash log per dead worker stayed for the kernel's life (150 crashes -> 158 files)."""
    for _ in range(4):
        reply, _ = execute(kernel.kc, "import os; os._exit(1)")
        assert reply["content"]["ename"] == "WorkerDied", reply["content"]
    execute_ok(kernel.kc, "1")
    entries = _private_entries(kernel)
    crash_logs = sorted(name for name in entries if name.startswith("crash"))
    workers = sorted(name for name in entries if stat.S_ISSOCK(entries[name]) and name.startswith("worker-"))
    assert crash_logs and len(crash_logs) <= len(workers), (crash_logs, workers)  # one per live worker


def test_every_entry_of_the_private_directory_is_private(kernel):
    """Sockets were 0755 and crash logs 0644 (inside the 0700 directory): each entry is
    private by itself, so a later change of the directory's mode exposes nothing."""
    execute_ok(kernel.kc, "print('hello')")
    entries = _private_entries(kernel)
    kinds = {stat.S_IFMT(mode) for mode in entries.values()}
    assert {stat.S_IFSOCK, stat.S_IFREG} <= kinds, entries  # links, crash logs, progress, lock
    wrong = {name: oct(stat.S_IMODE(mode)) for name, mode in entries.items()
             if stat.S_IMODE(mode) != (0o700 if stat.S_ISDIR(mode) else 0o600)}
    assert not wrong, wrong
