"""How worker processes start: forked from the worker template or the fork server, or spawned.

A spawned worker is a fresh interpreter that imports IPython and relaykernel's
worker before it can say READY: ~0.4 s of a core.  By default the supervisor
starts one worker template (:class:`Template`, relaykernel/worker/template.py):
a worker that imports those modules and builds its shell once, then never runs a
request.  The first one is forked from the supervisor before it binds its sockets
(supervisor/early.py), so they share the supervisor's heap; one started again later
is spawned with ``multiprocess``.  Each worker is forked from it on demand
(the first one, after a crash with no snapshot to promote, at a restart, a
spare): ~10 ms to READY, and the workers share the template's pages (IPython's
modules, the interpreter's heap, the built shell) instead of holding a copy.  So
the one process is both the fork server and the standby the kernel had before.

With ``--Supervisor.worker_template=False``, ``multiprocess``'s fork server
imports the modules once and every worker is forked from it and builds its own
shell; a standby worker waits beside the active one.

The early step starts the template (or server) before anything else is imported
(supervisor/early.py), and the first worker is forked from it once the
supervisor has loaded the rest.  Where neither can start, dies before its first
fork, or is not wanted (``--Supervisor.standby_workers=0`` on the command line),
workers are spawned.  One that dies later is started again (at most
MAX_WARM_UPS times in all); until it answers, the loop waits for it instead of
spawning a spare that would import IPython alongside it.

The template and the server are started with what a spawned worker starts with
(SIGINT ignored, huge pages for glibc's malloc), so forked workers inherit the
same (a forked template: from the supervisor, which the provisioner starts with
them, heap.py).  Both die with the supervisor, even a SIGKILLed one: the template as any
spawned worker (``PR_SET_PDEATHSIG``, worker/main.py); the server when the
supervisor's end of its "alive" pipe closes.  A template's workers watch the
supervisor through a pidfd, and outlive a template that dies; a server's die
with it (``PR_SET_PDEATHSIG``).
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
import weakref
from collections.abc import Iterator
from typing import Any

import multiprocess
import zmq
from multiprocess import forkserver, resource_tracker

from .. import heap, pipes, wire
from ..spawn import PRELOAD, WorkerConfig, run_worker

log = logging.getLogger("relaykernel.supervisor")

#: Seconds the fork server may take to answer before spares are spawned again.
WARM_UP_LIMIT = 20.0
#: Fork servers started per supervisor at most (one that keeps dying is not restarted forever).
MAX_WARM_UPS = 3
#: Seconds the worker template may take to answer a FORK (it forks at once: ~1-3 ms).
FORK_LIMIT = 2.0


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

    def __init__(self, inherited_tunables: str | None, private_dir: str,
                 template: WorkerConfig | None = None, ctx: zmq.Context | None = None,
                 forked_template: int | None = None) -> None:
        """``template``: the workers' config, to start a worker template (see
        :class:`Template`) instead of the fork server.  ``forked_template``: the pid of
        the first template, which the early step forked already (supervisor/early.py)."""
        self._tunables = inherited_tunables
        self._private_dir = private_dir
        self._template_config = template
        self._forked_template = forked_template
        self._zmq = ctx
        #: the worker template, in template mode (None: not started, or the fork server's mode)
        self.template: Template | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._watcher: threading.Thread | None = None
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
        if self._template_config is not None:
            self._start_template()
            return
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

    @property
    def uses_template(self) -> bool:
        return self._template_config is not None

    def _start_template(self) -> None:
        assert self._template_config is not None
        forked, self._forked_template = self._forked_template, None  # the first one only
        try:
            self.template = Template(self._zmq or zmq.Context.instance(), self._private_dir,
                                     self._template_config, self._warm_ups, forked=forked)
        except Exception as e:  # noqa: BLE001 - spawning still works
            log.warning("could not start the worker template (%s); spawning workers", e)
            self.state = ServerState.FAILED
            return
        self._server_pid = self.template.pid
        self.state = ServerState.WARMING
        self._warming_since = time.monotonic()
        self._watcher = threading.Thread(target=self._watch_template, args=(self.template,),
                                         name="relaykernel-template-watch", daemon=True)
        self._watcher.start()

    def _watch_template(self, template: Template) -> None:
        """Wait for the template's READY (it owns the template's link until then), then
        for its death: either wakes the loop."""
        ok = template.wait_ready(WARM_UP_LIMIT, self._stop_r)
        if self.state is ServerState.WARMING and self.template is template:
            self.state = ServerState.WARM if ok else ServerState.FAILED
            if not ok and not self._closing:
                log.warning("the worker template did not start; spawning workers")
        self._wake()
        if ok:
            with contextlib.suppress(OSError, ValueError):
                select.select([template.sentinel, self._stop_r], [], [])
            self._wake()

    def _wake(self) -> None:
        if self._closing:  # close() closed the pipe: its fd number may be another file's now
            return
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # closed: the supervisor is stopping
            pass

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
        return self.context() is not self.spawn_context

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
        if self.template is not None:
            return self.template.alive()
        if self._server_pid is None:
            return False
        try:  # WNOWAIT: leave it to multiprocess to reap
            return os.waitid(os.P_PID, self._server_pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    # --------------------------------------------------------------- workers
    def context(self) -> Any:
        """The multiprocess context the next worker starts with."""
        if self.state is ServerState.WARM and self.template is not None:
            if self.template.alive():
                return TemplateContext(self.template)
            log.warning("the worker template exited; spawning workers until it is back")
            self._drop_template()
        if self.state is ServerState.WARM:
            if self.server_alive():
                return self._fork_context
            log.warning("the worker fork server exited; spawning workers until it is back")
            self.state = ServerState.COLD
        if self.state is not ServerState.WARMING:
            _reap_dead_server()
        return self.spawn_context

    def check(self) -> None:
        """Notice a template that died (the loop woke on wake_fd): COLD, to be started again."""
        if self.template is not None and not self.template.alive():
            if self.state is ServerState.WARM:
                log.warning("the worker template exited; starting another")
            self._drop_template()

    def _drop_template(self) -> None:
        template, self.template = self.template, None
        self._server_pid = None
        if self.state is not ServerState.FAILED:
            self.state = ServerState.COLD
        if template is not None:
            template.close(grace=0.0)

    def wants_template(self) -> bool:
        """Template mode, with no template running or starting, and restarts left."""
        return self.uses_template and self.state is ServerState.COLD

    def close(self, kill: bool = False) -> None:
        """Stop the fork server with the supervisor (it would notice on its own, a moment
        later), and close the stand-in for the resource tracker.  Bounded: ~1 s at most.
        ``kill``: at once (the kernel will not run; the server may still be importing,
        and notices its pipe only after)."""
        self._closing = True
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")  # the template's watcher returns
        if self._watcher is not None:
            self._watcher.join(1.0)  # before the link it may be reading is closed
        if self.template is not None:
            self.template.close(grace=0.0 if kill else 0.5)
            self.template = None
            self._server_pid = None
        if kill and self._server_pid is not None and self.server_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._server_pid, signal.SIGKILL)
        for fd in (self.wake_fd, self._wake_w, self._stop_r, self._stop_w):
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


# ------------------------------------------------------------ the template
class Template:
    """The worker template (worker/template.py): a worker that built its shell and
    forks the workers.  The first one is forked from the supervisor by the early step
    (``forked``: its pid; :class:`ForkedProcess`), before the supervisor has a thread or
    a zmq context, so the two share the interpreter's heap and the modules both import;
    one started later (the first died) is spawned with multiprocess like any worker.
    A link of its own (and a side socket, which it never uses, for its children's code
    to be the same).

    Threads: the launcher's watcher uses the link until the template's READY; from
    then on only the main thread does (WorkerLauncher.context hands out the template
    only once it is WARM)."""

    def __init__(self, ctx: zmq.Context, private_dir: str, config: WorkerConfig, serial: int,
                 forked: int | None = None) -> None:
        self.config = config.for_template(private_dir, serial)
        self.endpoint = self.config.endpoint
        self._sockets: list[zmq.Socket] = []
        self._paths: list[str] = []
        try:  # a forked template connects before this binds: zmq retries its connection
            self.link = self._bind(ctx, self.endpoint)
            self._bind(ctx, self.endpoint + wire.SIDE_SUFFIX)
        except BaseException:
            if forked is not None:
                _reap(forked, 0)  # killed at once
            self._close_sockets()
            raise
        #: exit codes of the template's children (EXITED), by pid
        self.statuses: dict[int, int] = {}
        if forked is not None:
            self.process: Any = ForkedProcess(forked)
        else:
            self.process = WorkerLauncher.spawn_context.Process(
                target=run_worker, args=(self.config, True), name="relaykernel-template")
            try:
                with child_start(config.inherited_tunables):
                    self.process.start()
            except BaseException:
                self._close_sockets()
                raise
        self.pid: int = self.process.pid
        self.sentinel: int = self.process.sentinel

    def _bind(self, ctx: zmq.Context, endpoint: str) -> zmq.Socket:
        sock: zmq.Socket = ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 0)
        sock.bind(endpoint)
        path = endpoint[len("ipc://") :]
        os.chmod(path, 0o600)
        self._sockets.append(sock)
        self._paths.append(path)
        return sock

    def alive(self) -> bool:
        return not _readable(self.sentinel, 0)

    def wait_ready(self, timeout: float, stop_fd: int) -> bool:
        """Until the template's READY (True), its death, ``stop_fd`` or ``timeout`` (False)."""
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self.link, zmq.POLLIN)
        poller.register(self.sentinel, zmq.POLLIN)
        poller.register(stop_fd, zmq.POLLIN)
        try:
            while (left := deadline - time.monotonic()) > 0:
                events = dict(poller.poll(int(left * 1000) + 1))
                if self.sentinel in events or stop_fd in events:
                    return False
                if events.get(self.link) and self._receive_all(want=wire.READY):
                    return True
        except zmq.ZMQError:  # closed: the supervisor is stopping
            pass
        return False

    def _receive_all(self, want: bytes = b"") -> dict[str, Any] | None:
        """Read what the template sent; keep exit statuses.  Returns the meta of the
        first ``want`` message read (None if none)."""
        found: dict[str, Any] | None = None
        while True:
            try:
                lm = wire.decode(wire.recv_frames(self.link))
            except zmq.Again:
                return found
            except wire.WireError as e:
                log.warning("bad link message from the worker template: %s", e)
                continue
            if lm.kind == wire.EXITED:
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    self.statuses[int(lm.meta["pid"])] = int(lm.meta["exitcode"])
            elif lm.kind == wire.READY and lm.meta.get("version") != wire.PROTOCOL_VERSION:
                log.error("worker template speaks link version %r, expected %r",
                          lm.meta.get("version"), wire.PROTOCOL_VERSION)
                self.kill()
            elif lm.kind == want and found is None:
                found = dict(lm.meta)
            # else: what the template's startup printed (IOPUB), targets it registered: nobody's

    def fork(self, wake: wire.WakeMeta) -> int:
        """Ask for a worker; its pid.  Raises RuntimeError (the template is killed) if
        the template does not answer within FORK_LIMIT: it is stuck or gone."""
        try:
            wire.send_frames(self.link, wire.encode(wire.FORK, dict(wake)))
        except zmq.ZMQError as e:
            self.kill()
            raise RuntimeError(f"the worker template cannot take a FORK ({e})") from None
        deadline = time.monotonic() + FORK_LIMIT
        while True:
            answer = self._receive_all(want=wire.FORKED)
            if answer is not None and answer.get("number") == wake["number"]:
                return int(answer["pid"])
            left = deadline - time.monotonic()
            if left <= 0 or not self.alive():
                self.kill()
                raise RuntimeError("the worker template did not fork")
            with contextlib.suppress(zmq.ZMQError):
                self.link.poll(int(min(left, 0.05) * 1000) + 1, zmq.POLLIN)

    def exitcode(self, pid: int, wait: float = 0.0) -> int | None:
        """The exit code of the template's child ``pid`` once the template reaped it
        (None: not yet, or never: the template died first).  Waits up to ``wait`` s."""
        deadline = time.monotonic() + wait
        while True:
            with contextlib.suppress(zmq.ZMQError):
                self._receive_all()
            code = self.statuses.get(pid)
            left = deadline - time.monotonic()
            if code is not None or left <= 0 or not self.alive():
                return code
            with contextlib.suppress(zmq.ZMQError):
                self.link.poll(int(min(left, 0.05) * 1000) + 1, zmq.POLLIN)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)

    def close(self, grace: float = 0.5) -> None:
        """SHUTDOWN, then SIGKILL after ``grace`` s; reap it; close the link."""
        if self.alive() and grace > 0:
            with contextlib.suppress(zmq.ZMQError):
                wire.send_frames(self.link, wire.encode(wire.SHUTDOWN))
            self.process.join(grace)
        if self.process.is_alive():
            self.kill()
            self.process.join(1.0)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close(linger=0)
        for path in self._paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


class ForkedProcess:
    """The first worker template, which the early step forked (supervisor/early.py), as
    Template uses a multiprocess Process: a pidfd for its sentinel (closed with this
    object, as multiprocess closes a Process's: code that still holds the number, the
    Template, may select on it); the supervisor, its parent, reaps it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode: int | None = None
        try:
            self.sentinel = os.pidfd_open(pid)  # a zombie has one too: it is ours to reap
        except OSError:  # no such process: a sentinel that is readable
            r, w = os.pipe()
            os.close(w)
            self.sentinel = r
            self.exitcode = 1
        weakref.finalize(self, os.close, self.sentinel)

    def _poll(self) -> int | None:
        if self.exitcode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.exitcode = 1
            else:
                if pid:
                    self.exitcode = os.waitstatus_to_exitcode(status)
        return self.exitcode

    def is_alive(self) -> bool:
        return self._poll() is None

    def join(self, timeout: float | None = None) -> None:
        if self._poll() is None and _readable(self.sentinel, timeout):
            deadline = time.monotonic() + 0.1  # readable: it exited, waitpid has it at once
            while self._poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)


class TemplateContext:
    """What WorkerProcess starts a worker with when the template forks it: the part of
    a multiprocess context it uses."""

    def __init__(self, template: Template) -> None:
        self.template = template

    def get_start_method(self) -> str:
        return "template"

    def Process(self, target: Any, args: tuple[Any, ...], name: str = "") -> TemplateFork:
        return TemplateFork(self.template, args[0])


class TemplateFork:
    """A worker the template forked, as multiprocess's Process is used (WorkerProcess):
    a pidfd for its sentinel; its exit code from the template (EXITED)."""

    def __init__(self, template: Template, config: WorkerConfig) -> None:
        self.template = template
        self._config = config
        self.pid = 0
        self.sentinel = -1

    def start(self) -> None:
        config = self._config
        self.pid = self.template.fork({"endpoint": config.endpoint, "number": config.number,
                                       "progress_file": config.progress_file, "crash_log": config.crash_log})
        try:
            self.sentinel = os.pidfd_open(self.pid)
        except ProcessLookupError:  # exited and reaped already: a sentinel that is readable
            r, w = os.pipe()
            os.close(w)
            self.sentinel = r

    @property
    def exitcode(self) -> int | None:
        if self.sentinel < 0 or not _readable(self.sentinel, 0):
            return None
        return self.template.exitcode(self.pid)

    def is_alive(self) -> bool:
        return self.sentinel >= 0 and not _readable(self.sentinel, 0)

    def join(self, timeout: float | None = None) -> None:
        """Until it exited and the template told its exit code (or ``timeout``)."""
        started = time.monotonic()
        if self.sentinel < 0 or not _readable(self.sentinel, timeout):
            return
        left = 1.0 if timeout is None else timeout - (time.monotonic() - started)
        self.template.exitcode(self.pid, wait=max(0.0, left))

    def release(self) -> None:
        """Close the pidfd (WorkerProcess.close)."""
        if self.sentinel >= 0:
            with contextlib.suppress(OSError):
                os.close(self.sentinel)
            self.sentinel = -1


def _readable(fd: int, timeout: float | None) -> bool:
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    except (OSError, ValueError):
        return True
