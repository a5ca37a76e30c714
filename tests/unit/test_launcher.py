"""WorkerLauncher on its own: the fork server warms up and forks, or fails and
leaves spawning in place; close() leaves no process behind."""

from __future__ import annotations

import os
import select
import signal

import multiprocess
import psutil
import pytest

from relaykernel.supervisor import launcher as launcher_module
from relaykernel.supervisor.launcher import ServerState, WorkerLauncher


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A launcher for this test; multiprocess's process-wide state put back after."""
    config = multiprocess.current_process()._config
    had_tempdir = "tempdir" in config
    made: list[WorkerLauncher] = []

    def make(preload: tuple[str, ...]) -> WorkerLauncher:
        monkeypatch.setattr(launcher_module, "PRELOAD", preload)
        monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the server finds modules written here
        made.append(WorkerLauncher(None, str(tmp_path)))
        return made[-1]

    yield make
    for launcher in made:
        launcher.close()
    if not had_tempdir:
        config.pop("tempdir", None)


def _wait_for_answer(launcher: WorkerLauncher, timeout: float = 30.0) -> None:
    ready, _, _ = select.select([launcher.wake_fd], [], [], timeout)
    assert ready, "the probe never reported"
    launcher.acknowledge()


def _report_parent(conn) -> None:
    conn.send(os.getppid())
    conn.close()


def test_a_warm_server_forks_and_close_stops_it(isolated):
    launcher = isolated(("json",))
    assert launcher.context() is WorkerLauncher.spawn_context  # cold: spawn
    launcher.warm_up()
    assert launcher.state is ServerState.WARMING and launcher.waiting_for_server()
    server = psutil.Process(launcher._server_pid)
    assert signal.SIGINT in _ignored_signals(server.pid)  # an interrupt to the kernel's group spares it
    _wait_for_answer(launcher)
    assert launcher.state is ServerState.WARM and not launcher.waiting_for_server()
    ctx = launcher.context()
    assert ctx.get_start_method() == "forkserver"
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_report_parent, args=(send,))
    child.start()
    assert receive.poll(10)
    assert receive.recv() == server.pid  # forked by the server
    child.join(10)
    assert child.exitcode == 0
    launcher.close()
    server.wait(5)  # it is gone (raises TimeoutExpired otherwise)


def test_a_server_that_dies_while_loading_leaves_spawning_in_place(isolated, tmp_path):
    (tmp_path / "relaykernel_test_boom.py").write_text("raise RuntimeError('boom at import')\n")
    launcher = isolated(("relaykernel_test_boom",))
    launcher.warm_up()
    _wait_for_answer(launcher)
    assert launcher.state is ServerState.FAILED
    assert not launcher.waiting_for_server()
    assert launcher.context() is WorkerLauncher.spawn_context


def _ignored_signals(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


@pytest.mark.parametrize(("args", "wanted"), [
    ([], True),  # the default: early.TEMPLATE_DEFAULT
    (["--Supervisor.worker_template=False"], False),
    (["--Supervisor.worker_template", "false"], False),
    (["--Supervisor.worker_template=True"], True),
    (["--Supervisor.worker_template", "--debug"], True),  # the flag alone
    (["--Supervisor.worker_template=0", "-f", "k.json"], False),
])
def test_the_worker_template_is_read_from_the_command_line(args, wanted):
    """Before the first worker starts (early.py), so a config file cannot say."""
    from relaykernel.supervisor.early import template_wanted

    assert template_wanted(args) is wanted
