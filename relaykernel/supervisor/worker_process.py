"""Start, watch, signal and stop one worker process.

Owned by the supervisor's main thread.  A worker is a ``multiprocess`` child
(spawned, or forked from the fork server: launcher.py) linked by one PAIR
socket over ipc in the supervisor's private 0700 directory.  Liveness comes
from the process sentinel (an fd the poller watches), never from a quiet link;
readiness comes from the worker's READY message.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import select
import signal
import time
from dataclasses import dataclass
from typing import Any

import zmq

from .. import progress, transport, wire
from ..spawn import WorkerConfig, run_worker
from .launcher import WorkerLauncher, child_start

log = logging.getLogger("relaykernel.supervisor")

#: Most bytes of unforwarded output shown per stream after a crash (the pipe holds 64 KiB).
UNREAD_OUTPUT_LIMIT = 1 << 16


class WorkerState(enum.Enum):
    STARTING = "starting"  # process launched, IPython loading
    READY = "ready"  # sent READY: a warm standby
    ACTIVATING = "activating"  # sent ACTIVATE; adopting comms, not yet taking requests
    ACTIVE = "active"  # runs the kernel's requests
    GONE = "gone"  # exited or being stopped


@dataclass(frozen=True)
class ExitInfo:
    """How a worker ended, in words a user understands."""

    exitcode: int | None
    #: what ended it, when the exit code cannot say (see WorkerPool.exit_of)
    cause: str = ""

    @property
    def signal_name(self) -> str | None:
        if self.exitcode is not None and self.exitcode < 0:
            try:
                return signal.Signals(-self.exitcode).name
            except ValueError:
                return f"signal {-self.exitcode}"
        return None

    def describe(self) -> str:
        if self.cause:
            return self.cause
        if self.exitcode is None:
            return "unknown exit"
        if self.signal_name:
            return f"killed by {self.signal_name}"
        return f"exit code {self.exitcode}"


class WorkerProcess:
    """One worker: its process and its end of the link."""

    def __init__(self, ctx: zmq.Context, number: int, private_dir: str, config: WorkerConfig,
                 start_method: Any = WorkerLauncher.spawn_context) -> None:
        self._bind(ctx, number, private_dir, config)
        #: "spawn", "forkserver" or "template" ("snapshot": SnapshotProcess)
        self.start_method: str = start_method.get_start_method()
        self.process: Any = start_method.Process(
            target=run_worker, args=(self.config,), name=f"relaykernel-worker-{number}"
        )
        try:
            with child_start(config.inherited_tunables):  # a forked one inherited them from the server
                self.process.start()
        except BaseException:
            self.close()  # its endpoint and files: the caller may start another
            raise
        self.pid: int = self.process.pid
        self.sentinel: int = self.process.sentinel

    def _bind(self, ctx: zmq.Context, number: int, private_dir: str, config: WorkerConfig) -> None:
        """The link's endpoint, bound, and the worker's files: what any worker connects to."""
        self.number = number
        self.link = ctx.socket(zmq.PAIR)
        self.link.setsockopt(zmq.LINGER, 0)
        # A send never waits (send() below): a worker that died unnoticed, or never
        # connected, would otherwise block the supervisor's loop forever.
        self.link.setsockopt(zmq.SNDTIMEO, 0)
        self.endpoint = f"ipc://{private_dir}/worker-{number}"
        #: larger kernel buffers on the link's connection, set at the first send after it is made
        self.link_buffers = transport.SocketBuffers(self.link, bound=True)
        #: where a REQUEST's large buffers go, rather than through the link (transport.py)
        self.shared = transport.SharedOut()
        self.link.bind(self.endpoint)
        os.chmod(self.endpoint[len("ipc://") :], 0o600)  # private even if the directory's mode changes
        #: what must reach the worker while its main thread is busy (wire.SIDE_SUFFIX)
        self.side = ctx.socket(zmq.PAIR)
        self.side.setsockopt(zmq.LINGER, 0)
        self.side.setsockopt(zmq.SNDTIMEO, 0)
        self.side.bind(self.endpoint + wire.SIDE_SUFFIX)
        os.chmod(self.endpoint[len("ipc://") :] + wire.SIDE_SUFFIX, 0o600)
        self.progress_file = f"{private_dir}/worker-{number}.started"
        progress.create(self.progress_file)
        #: DONEs received: with progress.read, tells which sent request was running
        self.requests_done = 0
        self.config = config.with_endpoint(self.endpoint, number, self.progress_file)
        self.state = WorkerState.STARTING
        #: comms that existed when this worker became active, not yet adopted
        self.orphans: set[str] = set()
        self.started_at = time.monotonic()
        #: our read ends of the worker's stdout/stderr capture pipes, by stream name
        self._output_pipes: dict[str, int] = {}
        #: the worker's latest snapshot (worker/snapshot.py), and why there is none
        self.snapshot: Snapshot | None = None
        self.no_snapshot = "none was taken yet (one is taken once the worker is idle after a cell)"

    def watch_output(self, pipes: dict[str, int]) -> None:
        """Open the worker's capture pipes (ReadyMeta.output_pipes) through /proc, to
        read only once it is dead: what native code writes right before it aborts
        (an assertion, a CUDA error) is still in the pipe, but the worker's reader
        thread died before forwarding it.  Where /proc cannot do it, nothing is kept."""
        for name, fd in pipes.items():
            try:
                self._output_pipes[str(name)] = os.open(f"/proc/{self.pid}/fd/{int(fd)}",
                                                        os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except (OSError, ValueError, TypeError) as e:
                log.debug("cannot watch worker %s's %s pipe: %s", self.number, name, e)

    def unread_output(self, limit: int = UNREAD_OUTPUT_LIMIT) -> dict[str, str]:
        """After the worker died: what it wrote to fds 1 and 2 and nobody forwarded,
        by stream name (the last ``limit`` bytes of each)."""
        unread = {}
        for name, fd in self._output_pipes.items():
            tail = bytearray()
            for _ in range(16):  # bounded: a surviving writer must not keep us here
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:  # BlockingIOError: a surviving child holds the pipe open
                    break
                if not data:
                    break
                tail += data
                del tail[:-limit]  # keep the tail: it names the crash
            if tail:
                unread[name] = tail.decode("utf-8", "replace")
        return unread

    def send(self, frames: list[Any], side: bool = False) -> bool:
        """Send a link message without ever blocking (``side``: on the side socket).
        A worker that cannot take it now (dead, never connected, or its queue
        full) is killed instead, so its sentinel brings it to recovery; False
        then, and nothing was sent (only a message's first frame can fail: zmq
        queues the rest with it)."""
        if self.link_buffers.pending:
            self.link_buffers.apply()
        try:
            wire.send_frames(self.side if side else self.link, frames)
        except zmq.Again:
            log.warning("worker %s cannot take a link message; killing it", self.number)
            self.kill()
            return False
        return True

    def send_request(self, meta: dict[str, Any] | None, frames: list[Any], owner: Any) -> bool:
        """Send a REQUEST (main link) whose large buffers go through the shared region
        when it is free; it stays ``owner``'s until :meth:`done` (see transport.py)."""
        if len(frames) > wire.VERIFIED.buffers:
            frames = list(frames)
            spec = self.shared.place(frames, wire.VERIFIED.buffers, owner)
            if spec is not None:
                meta = {**(meta or {}), "shared": spec}
        sent = self.send(wire.encode(wire.REQUEST, meta, frames))
        if not sent:
            self.shared.release(owner)
        return sent

    def done(self, request: Any) -> None:
        """The worker finished ``request``: the shared region is free if it held its buffers."""
        self.shared.release(request)

    def requests_running(self) -> int | None:
        """Requests the worker began and did not finish as far as the supervisor
        knows (0 or 1, more if DONEs were lost with it); None if unknown."""
        started = progress.read(self.progress_file)
        return None if started is None else max(0, started - self.requests_done)

    def exit_info(self, timeout: float = 1.0) -> ExitInfo:
        self.process.join(timeout)
        return ExitInfo(self.process.exitcode)

    def signal(self, signum: int) -> None:
        """Signal the worker's process group (it leads one), so `!cmd` children get it too."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def request_stop(self) -> None:
        """Ask the worker to exit (it may be busy or still starting)."""
        try:
            wire.send_frames(self.link, wire.encode(wire.SHUTDOWN))
        except zmq.ZMQError:
            pass

    def stop(self, grace: float = 1.0) -> None:
        """Ask, wait, SIGTERM, wait, SIGKILL; close the link. Bounded by ~3*grace."""
        if self.process.is_alive():
            self.request_stop()
            self.process.join(grace)
        if self.process.is_alive():
            self.signal(signal.SIGTERM)
            self.process.join(grace)
        if self.process.is_alive():
            self.kill()
            self.process.join(grace)
        self.close()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def _reaped(self) -> bool:
        return self.process.exitcode is not None

    def close(self) -> None:
        """Forget the worker; the programs it started (its process group) end with it,
        as a kernel's do when jupyter_client kills it."""
        self.state = WorkerState.GONE
        if self._reaped():  # the group id is still its own
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.link_buffers.close()
        self.shared.close()
        self.link.close(linger=0)
        self.side.close(linger=0)
        release = getattr(self.process, "release", None)  # a template's fork: its pidfd (launcher.py)
        if release is not None:
            release()
        for fd in self._output_pipes.values():
            os.close(fd)
        self._output_pipes.clear()
        link_path = self.endpoint[len("ipc://") :]
        for path in (link_path, link_path + wire.SIDE_SUFFIX, self.progress_file):
            try:
                os.unlink(path)
            except OSError:
                pass


# --------------------------------------------------------------- snapshots
@dataclass
class Snapshot:
    """A worker's sleeping snapshot (wire.SnapshotMeta), held by a pidfd: safe to
    signal whatever happens to its pid.  Not the supervisor's child: the worker's."""

    pidfd: int
    pid: int
    execution_count: int
    wake: str
    names: int

    @classmethod
    def of(cls, meta: dict[str, Any]) -> Snapshot:
        """From a SNAPSHOT meta; raises OSError if its process is gone."""
        pid = int(meta["pid"])
        return cls(os.pidfd_open(pid), pid, int(meta.get("execution_count", 0)), str(meta.get("wake", "")),
                   int(meta.get("names", 0)))

    def alive(self) -> bool:
        return not _readable(self.pidfd, 0)

    def kill(self, wait: float = 0.0) -> None:
        """SIGKILL it; wait up to ``wait`` seconds for it to be gone."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except OSError:
            return
        _readable(self.pidfd, wait)

    def close(self) -> None:
        os.close(self.pidfd)


class _AdoptedProcess:
    """A process the supervisor did not start, watched through a pidfd.  Its exit
    status is its parent's to read, so ``exitcode`` stays None."""

    exitcode = None

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.sentinel = pidfd

    def is_alive(self) -> bool:
        return not _readable(self.sentinel, 0)

    def join(self, timeout: float | None = None) -> None:
        _readable(self.sentinel, timeout)


class SnapshotProcess(WorkerProcess):
    """A snapshot being woken to become a worker: bound like a new worker, then told
    where to connect through its wake FIFO.  Raises OSError if it cannot be woken."""

    def __init__(self, ctx: zmq.Context, number: int, private_dir: str, config: WorkerConfig,
                 snapshot: Snapshot) -> None:
        self._bind(ctx, number, private_dir, config)
        self.start_method = "snapshot"
        self.process = _AdoptedProcess(snapshot.pid, snapshot.pidfd)
        self.pid = snapshot.pid
        self.sentinel = snapshot.pidfd
        wake: wire.WakeMeta = {"endpoint": self.endpoint, "number": number,
                               "progress_file": self.progress_file, "crash_log": self.config.crash_log}
        try:
            fd = os.open(snapshot.wake, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.write(fd, json.dumps(wake).encode() + b"\n")  # < PIPE_BUF: written whole or not at all
            finally:
                os.close(fd)
        except OSError:
            super().close()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(snapshot.wake)

    def exit_info(self, timeout: float = 1.0) -> ExitInfo:
        """Its exit status is its dead parent's: a fatal signal is read from its crash log."""
        self.process.join(timeout)
        try:
            with open(self.config.crash_log, "rb") as f:
                head = f.read(200).decode("utf-8", "replace")
        except OSError:
            head = ""
        for words, signum in _FATAL_ERRORS.items():
            if f"Fatal Python error: {words}" in head:
                return ExitInfo(-signum)
        return ExitInfo(None, cause="ended (a restored worker's exit status is not the supervisor's to read)")

    def _reaped(self) -> bool:
        return not self.process.is_alive()

    def close(self) -> None:
        super().close()
        with contextlib.suppress(OSError):
            os.close(self.sentinel)


#: faulthandler's words for the fatal signals it reports, and the signals
_FATAL_ERRORS = {"Segmentation fault": signal.SIGSEGV, "Aborted": signal.SIGABRT, "Bus error": signal.SIGBUS,
                 "Floating point exception": signal.SIGFPE, "Illegal instruction": signal.SIGILL}


def _readable(fd: int, timeout: float | None) -> bool:
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    except (OSError, ValueError):
        return True
