"""A SIGKILLed supervisor cannot remove its private directory (worker links, crash
logs); the next supervisor does, and touches nothing else (private_dir.py)."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile

import psutil

from relaykernel.supervisor import private_dir
from tests.kernel.helpers import (
    execute_ok,
    reap,
    relaykernel_only,
    start_kernel,
    stop_kernel,
    wait_for,
)

pytestmark = relaykernel_only


def _private_dir_of(supervisor_pid: int) -> str:
    """The directory whose lock file the supervisor holds open."""
    for f in psutil.Process(supervisor_pid).open_files():
        if os.path.basename(f.path) == private_dir.LOCK_NAME:
            return os.path.dirname(f.path)
    raise AssertionError("the supervisor holds no private directory lock")


def test_a_killed_supervisors_directory_is_removed_by_the_next_one():
    # A temporary directory of the test's own: any supervisor that starts cleans its
    # temporary directory, and kernels of other tests may start meanwhile (pytest -n).
    # Short, for the ipc paths inside it.
    tmp = tempfile.mkdtemp(prefix="rk-")
    try:
        _killed_supervisors_directory_is_removed(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _killed_supervisors_directory_is_removed(tmp: str) -> None:
    env = {"TMPDIR": tmp}
    first = start_kernel(env=env)
    try:
        execute_ok(first.kc, "1")
        left = _private_dir_of(first.pid)
        assert os.path.dirname(left) == tmp
        assert stat.S_IMODE(os.stat(left).st_mode) == 0o700
        descendants = first.process().children(recursive=True)
        first.process().kill()
        reap(descendants, 10)
    finally:
        stop_kernel(first)
    assert os.path.isdir(left)  # nobody else could have removed it

    # what must stay: a directory of a live holder, and one that is not a supervisor's
    alive = tempfile.mkdtemp(prefix=private_dir.PREFIX, dir=tmp)
    lock = os.open(os.path.join(alive, private_dir.LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    other = tempfile.mkdtemp(prefix=private_dir.PREFIX + "not-a-supervisor-", dir=tmp)
    second = start_kernel(env=env)
    try:
        execute_ok(second.kc, "1")
        wait_for(lambda: not os.path.exists(left), 30, what="the killed supervisor's directory to go")
        assert os.path.isdir(alive) and os.path.isdir(other)
        assert os.path.dirname(_private_dir_of(second.pid)) == tmp
    finally:
        stop_kernel(second)
        os.close(lock)
        for path in (alive, other):
            for name in os.listdir(path):
                os.unlink(os.path.join(path, name))
            os.rmdir(path)
