"""How worker processes start: forked from a server that has IPython loaded, or spawned.

A spawned worker is a fresh interpreter that imports IPython and relaykernel's
worker before it can say READY: ~0.4 s of a core.  ``multiprocess``'s fork
server imports those modules once; a worker forked from it only builds its
shell, and shares the server's pages (IPython's modules, the interpreter's
heap) instead of holding a copy of its own.

The early step starts the server before anything else is imported
(supervisor/early.py), and the first worker is forked from it once the
supervisor has loaded the rest; so are the spares and every later worker.
Where the server cannot start, dies before its first fork, or is not wanted
(``--Supervisor.standby_workers=0`` on the command line), workers are spawned.
A server that dies later is started again (at most MAX_WARM_UPS times in
all); until it answers, the loop waits for it instead of spawning a spare
that would import IPython alongside it.

The server is started with what a spawned worker starts with (SIGINT ignored,
huge pages for glibc's malloc), so forked workers inherit the same.  It leaves
on its own when the supervisor's end of its "alive" pipe closes (every worker
closes its copy, see ``worker.main``), even if the supervisor is SIGKILLed;
forked workers then die with it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import multiprocess
from multiprocess import forkserver, resource_tracker

from .. import heap, pipes
from ..spawn import PRELOAD

log = logging.getLogger("relaykernel.supervisor")

#: Seconds the fork server may take to answer before spares are spawned again.
WARM_UP_LIMIT = 20.0
#: Fork servers started per supervisor at most (one that keeps dying is not restarted forever).
MAX_WARM_UPS = 3


class ServerState(enum.Enum):
    COLD = "cold"  # not started (or died): spawn
    WARMING = "warming"  # started; its first fork is on its way
    WARM = "warm"  # forked a probe process: fork from it
    FAILED = "failed"  # could not start, or died too often: spawn from now on


def without_resource_tracker() -> None:
    """Keep ``multiprocess`` from starting its resource tracker, a process of its own
    (~12 MB PSS) that nothing of relaykernel needs.

    Starting a worker, spawned or through the fork server, asks the tracker for the
    write end of its pipe (``getfd()``), and starts it the first time.  It would track
    the named semaphores and shared memory that processes holding that end create
    with ``multiprocess``, and unlink the ones left when they have all exited: the
    supervisor and the fork server create none, and user code in a worker does not
    need the supervisor's (``run_worker`` drops it, so a worker whose code uses
    ``multiprocess`` starts a tracker of its own when it first needs one, as the
    standard library's ``multiprocessing`` always does).  So the tracker is handed
    ``/dev/null`` instead: ``getfd()`` finds it "alive" and starts nothing.
    Idempotent; the supervisor's main thread."""
    tracker = resource_tracker._resource_tracker  # private API of multiprocess
    with tracker._lock:
        if tracker._fd is None:
            tracker._fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def child_start(inherited_tunables: str | None) -> Iterator[None]:
    """What a process the supervisor starts for user code inherits: SIGINT ignored
    until the worker leads its own process group (jupyter_client interrupts the
    kernel's whole group), and huge pages for glibc's malloc (read at exec, heap.py).
    Main thread only (signal.signal)."""
    without_resource_tracker()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ[heap.TUNABLES_ENV] = heap.hugepage_tunables(inherited_tunables)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        heap.restore_tunables(inherited_tunables)


class WorkerLauncher:
    """Chooses how the next worker starts; owns the fork server.  Main thread, except
    for the probe thread, which only waits for the server's first fork."""

    spawn_context: Any = multiprocess.get_context("spawn")

    def __init__(self, inherited_tunables: str | None, private_dir: str) -> None:
        self._tunables = inherited_tunables
        self._private_dir = private_dir
        self._fork_context: Any = multiprocess.get_context("forkserver")
        self.state = ServerState.COLD
        self._warm_ups = 0
        self._warming_since = 0.0
        self._server_pid: int | None = None
        self._closing = False
        #: readable when the probe thread has an answer; the loop polls it
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)

    # ------------------------------------------------------------- the server
    def warm_up(self) -> None:
        """Start the fork server (returns at once) and a thread that waits for its first fork."""
        if self.state is not ServerState.COLD:
            return
        if self._warm_ups >= MAX_WARM_UPS:
            self.state = ServerState.FAILED
            return
        self._warm_ups += 1
        try:
            # its listening socket goes into the supervisor's private 0700 directory,
            # removed with it, rather than a pymp-* directory of its own that a killed
            # supervisor would leave in /tmp (private API: multiprocess.util.get_temp_dir)
            multiprocess.current_process()._config.setdefault("tempdir", self._private_dir)
            self._fork_context.set_forkserver_preload(list(PRELOAD))
            with child_start(self._tunables):
                forkserver.ensure_running()
        except Exception as e:  # noqa: BLE001 - spawning still works
            log.warning("could not start the worker fork server (%s); spawning workers", e)
            self.state = ServerState.FAILED
            return
        self._server_pid = forkserver._forkserver._forkserver_pid
        self.state = ServerState.WARMING
        self._warming_since = time.monotonic()
        threading.Thread(target=self._probe, name="relaykernel-forkserver-probe", daemon=True).start()

    def _probe(self) -> None:
        """Fork one empty process: returns once the server has imported IPython."""
        ok = False
        try:
            probe = self._fork_context.Process(name="relaykernel-forkserver-probe")
            probe.start()
            probe.join(WARM_UP_LIMIT)
            ok = probe.exitcode == 0
        except Exception as e:  # noqa: BLE001 - reported below; spawning still works
            if not self._closing:  # killed by close(): nothing to report
                log.warning("the worker fork server did not answer: %s", e)
        if self.state is ServerState.WARMING:
            self.state = ServerState.WARM if ok else ServerState.FAILED
        if self._closing:  # close() closed the pipe: its fd number may be another file's now
            return
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # closed: the supervisor is stopping
            pass

    def wait_for_server(self, timeout: float) -> bool:
        """Block until the server answered its probe, for at most ``timeout`` seconds;
        True if workers can be forked from it now.  The first worker waits here: the
        server started with the supervisor, so it has imported IPython by the time the
        supervisor has loaded the rest, or soon after."""
        if self.state is ServerState.WARMING and select.select([self.wake_fd], [], [], max(0.0, timeout))[0]:
            self.acknowledge()
        return self.context() is self._fork_context

    def acknowledge(self) -> None:
        """The loop saw wake_fd: empty it."""
        try:
            pipes.drain(self.wake_fd)
        except OSError:  # closed: the supervisor is stopping
            pass

    def waiting_for_server(self) -> bool:
        """Whether a spare should wait for the fork server rather than be spawned now."""
        if self.state is ServerState.WARMING and time.monotonic() - self._warming_since > WARM_UP_LIMIT:
            log.warning("the worker fork server did not answer in %g s; spawning workers", WARM_UP_LIMIT)
            self.state = ServerState.FAILED
        return self.state is ServerState.WARMING

    def server_alive(self) -> bool:
        if self._server_pid is None:
            return False
        try:  # WNOWAIT: leave it to multiprocess to reap
            return os.waitid(os.P_PID, self._server_pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    # --------------------------------------------------------------- workers
    def context(self) -> Any:
        """The multiprocess context the next worker starts with."""
        if self.state is ServerState.WARM:
            if self.server_alive():
                return self._fork_context
            log.warning("the worker fork server exited; spawning workers until it is back")
            self.state = ServerState.COLD
        if self.state is not ServerState.WARMING:
            _reap_dead_server()
        return self.spawn_context

    def close(self, kill: bool = False) -> None:
        """Stop the fork server with the supervisor (it would notice on its own, a moment
        later), and close the stand-in for the resource tracker.  Bounded: ~1 s at most.
        ``kill``: at once (the kernel will not run; the server may still be importing,
        and notices its pipe only after)."""
        self._closing = True
        if kill and self._server_pid is not None and self.server_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._server_pid, signal.SIGKILL)
        for fd in (self.wake_fd, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        server = forkserver._forkserver  # private API of multiprocess: best effort
        try:
            alive_w = server._forkserver_alive_fd
            if alive_w is not None:
                os.close(alive_w)  # the server sees EOF and exits
                server._forkserver_alive_fd = None
            if self._server_pid is not None:
                _reap(self._server_pid, 1.0)
            server._forkserver_pid = None
        except Exception as e:  # noqa: BLE001
            log.debug("stopping the fork server: %s", e)
        tracker = resource_tracker._resource_tracker  # private API of multiprocess
        try:
            if tracker._pid is None:  # /dev/null (without_resource_tracker), or never started
                if tracker._fd is not None:
                    os.close(tracker._fd)
                    tracker._fd = None
            else:
                tracker._stop()
        except Exception as e:  # noqa: BLE001 - private API: best effort
            log.debug("stopping the resource tracker: %s", e)


def _reap_dead_server() -> None:
    """A fork server that died stays a zombie until multiprocess starts the next one,
    which may be never: reap it, and forget it as ``ensure_running`` does a dead one.
    (Private API of multiprocess; the server multiprocess knows, which may not be the
    one we started: a fork request finding it dead starts another.)"""
    server = forkserver._forkserver
    with server._lock:
        pid = server._forkserver_pid
        try:
            if pid is None or not os.waitpid(pid, os.WNOHANG)[0]:
                return  # none, or alive
        except ChildProcessError:
            pass
        if server._forkserver_alive_fd is not None:
            with contextlib.suppress(OSError):
                os.close(server._forkserver_alive_fd)
        server._forkserver_pid = server._forkserver_alive_fd = server._forkserver_address = None


def _reap(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
