"""Finding and cleaning up the processes a frontend started, by pid.

Frontends (nbclient, papermill, jupyter console) start kernels themselves, so
the tests mark the environment those kernels inherit with a unique value and
later look processes up by it.  Only processes carrying the marker are ever
signalled, each by its pid.
"""

from __future__ import annotations

import os
import uuid

import psutil

from tests.kernel.helpers import kernel_env, reap

MARKER_VAR = "RELAYKERNEL_TEST_MARKER"


def new_marker() -> str:
    return uuid.uuid4().hex


def marked_env(marker: str, **extra: str) -> dict[str, str]:
    """The kernel test environment plus the marker (and ``extra``)."""
    env = kernel_env()
    env[MARKER_VAR] = marker
    env.update(extra)
    return env


def find_marked(marker: str) -> list[psutil.Process]:
    """Live processes (other than this one) whose environment carries ``marker``."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(MARKER_VAR) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def reap_marked(marker: str, wait: float = 10.0) -> list[int]:
    """Wait (bounded) for marked processes to exit, then SIGKILL survivors by pid.

    Returns the pids that had to be killed.
    """
    return reap(find_marked(marker), wait)
