"""The worker template: a worker that built its shell, runs no request, and forks the workers.

The supervisor forks its first template early (supervisor/early.py: they then
share the supervisor's heap), or spawns one with ``multiprocess`` like any worker
(supervisor/launcher.py).  It runs main.py's ``serve`` up to READY
(imports, ShellApp configured, extensions and startup files run), then, instead
of waiting for ACTIVATE, waits on its link for FORK.  Each FORK forks it: the
child does what a woken snapshot does (snapshot.py's ``_sleep`` and
``become_worker``, main.py's ``_restored``): leads a process group of its own,
closes its copies of the template's pipes and sockets, connects a new link and
side socket to the endpoint the FORK names, and says READY there, a worker like
any other.  The template answers FORKED with the child's pid.

So one process is both what the fork server was (the workers share its pages:
IPython's modules and the interpreter's heap, frozen for the collector before
each fork) and what the standby was (a built shell, a fork away from READY).

The template's children are workers, its only children: a thread reaps them and
sends each one's exit status (EXITED), which the supervisor cannot read itself.
A forked worker dies with the supervisor through a pidfd (as a snapshot does),
not with the template: a template that dies leaves the workers it forked running.
The template itself dies with the supervisor as a spawned worker does (main.py).

Must not import IPython (main.py has, by the time this runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from .. import wire
from .interrupts import MAIN_THREAD_SIGNALS
from .snapshot import _plumbing

if TYPE_CHECKING:
    from .kernel import WorkerKernel
    from .link import Link
    from .snapshot import Snapshots

#: What the template reads on its link.
_TEMPLATE_KINDS = frozenset({wire.FORK, wire.SHUTDOWN})
#: The template's process name (``ps``, /proc/PID/comm); its children take back the one it had.
NAME = "relay-template"
_PR_SET_NAME = 15


def serve_as_template(kernel: WorkerKernel, link: Link, snapshots: Snapshots,
                      supervisor_pid: int) -> wire.WakeMeta | None:
    """Fork a worker for each FORK, until SHUTDOWN (None).  Returns in a forked
    child, with its supervisor pidfd in ``snapshots.supervisor_fd``: what the FORK
    asked it to become (main.py rebuilds the worker from that)."""
    # opened after Snapshots listed the plumbing: the children keep it (snapshot.py)
    supervisor_fd = os.pidfd_open(supervisor_pid)
    forked = threading.Event()
    with _main_thread_signals_blocked():  # the reaper must not take the main thread's signals
        threading.Thread(target=_reap, args=(link, forked), name="relaykernel-template-reaper",
                         daemon=True).start()
    while True:
        lm = link.receive(_TEMPLATE_KINDS)
        if lm.kind == wire.SHUTDOWN:
            return None
        wake = cast(wire.WakeMeta, lm.meta)
        kernel.flush_streams()  # nothing of the template's is the child's to send
        gc.freeze()  # a worker's collections then leave the pages it shares with the template alone
        # what the child closes: the template's link, side socket and pipes as they are
        # now (listed at READY, a number may have been closed and reused since: by the
        # supervisor's pidfd, say, which the child keeps)
        snapshots._plumbing = _plumbing() - {supervisor_fd}
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)  # interrupts reach the worker and the programs it starts, as one group
            snapshots._close_plumbing()
            _set_name(_own_name[0] if _own_name else "python")
            snapshots.supervisor_fd = supervisor_fd
            return wake
        forked.set()
        link.send(wire.FORKED, {"pid": pid, "number": int(wake.get("number", 0))})


#: the process name the template had before it took NAME (its children take it back)
_own_name: list[str] = []


def name_process() -> None:
    """Name this process NAME (at the template's start, so that ``ps`` tells it apart
    from a worker while it builds its shell)."""
    _own_name.append(_set_name(NAME))


def _reap(link: Link, forked: threading.Event) -> None:
    """Reap the template's children (the workers it forked) and tell the supervisor
    how each ended: their exit status is the template's to read."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # none now: until the next fork
            forked.wait()
            forked.clear()
            continue
        except InterruptedError:
            continue
        with contextlib.suppress(Exception):
            link.send(wire.EXITED, {"pid": pid, "exitcode": os.waitstatus_to_exitcode(status)})


@contextlib.contextmanager
def _main_thread_signals_blocked() -> Iterator[None]:
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _set_name(name: str) -> str:
    """Set this process's name (what ``ps`` and /proc/PID/comm show); returns the old one."""
    try:
        with open("/proc/self/comm") as f:
            old = f.read().strip()
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15])
        return old
    except (OSError, AttributeError):
        return name
