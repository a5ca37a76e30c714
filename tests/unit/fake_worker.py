"""A supervisor loop with fake workers, driven step by step in one thread.

The loop (relaykernel/supervisor/loop.py) runs on real zmq sockets: the
frontend's on loopback TCP, each worker's link over inproc.  A
:class:`FakeWorker` is the supervisor's handle to a worker that is not a
process: its sentinel is a pipe the test closes to "kill" it, its progress
count is a number the test sets, and the test speaks for the worker through
:class:`WorkerEnd`, the other end of the link, with wire.py messages.  Nothing
runs in the background: :meth:`Harness.step` polls the loop once, so each test
decides exactly what happens in what order, and runs in milliseconds.
"""

from __future__ import annotations

import itertools
import json
import os
import signal as signals
import time
from collections.abc import Callable
from typing import Any

import zmq
from jupyter_client.session import Session

from relaykernel import wire
from relaykernel.signing import Signer
from relaykernel.spawn import WorkerConfig
from relaykernel.supervisor.launcher import ServerState
from relaykernel.supervisor.loop import Settings, SupervisorLoop
from relaykernel.supervisor.sockets import KernelSockets, Verifier
from relaykernel.supervisor.worker_process import ExitInfo, WorkerState

KEY = b"fake-worker-tests"
_endpoints = itertools.count()


class FakeLauncher:
    """No fork server: every worker starts through the harness's factory."""

    state = ServerState.FAILED
    uses_template = False

    def __init__(self) -> None:
        self.wake_fd, self._wake_w = os.pipe()

    def warm_up(self) -> None:
        pass

    def acknowledge(self) -> None:
        pass

    def check(self) -> None:
        pass

    def wants_template(self) -> bool:
        return False

    def waiting_for_server(self) -> bool:
        return False

    def server_alive(self) -> bool:
        return False

    def context(self) -> None:
        return None

    def close(self) -> None:
        for fd in (self.wake_fd, self._wake_w):
            os.close(fd)


class FakeWorker:
    """What the supervisor holds of a worker (WorkerProcess's interface), without a process."""

    start_method = "fake"

    def __init__(self, ctx: zmq.Context, number: int, config: WorkerConfig) -> None:
        self.number = number
        self.pid = -number  # never a real process: signal() below only records
        self.config = config
        self.link = ctx.socket(zmq.PAIR)
        self.link.setsockopt(zmq.LINGER, 0)
        self.link.setsockopt(zmq.SNDTIMEO, 0)
        self.endpoint = f"inproc://fake-worker-{next(_endpoints)}"
        self.link.bind(self.endpoint)
        self.side = ctx.socket(zmq.PAIR)
        self.side.setsockopt(zmq.LINGER, 0)
        self.side.setsockopt(zmq.SNDTIMEO, 0)
        self.side.bind(self.endpoint + wire.SIDE_SUFFIX)
        self.sentinel, self._alive_w = os.pipe()
        self.state = WorkerState.STARTING
        self.orphans: set[str] = set()
        self.started_at = time.monotonic()
        self.requests_done = 0
        #: requests the worker "began" (progress.py's count); the test sets it
        self.begun = 0
        self.exitcode: int | None = None
        self.signals: list[int] = []

    # the supervisor's side of WorkerProcess
    def send(self, frames: list[Any], side: bool = False) -> bool:
        try:
            wire.send_frames(self.side if side else self.link, frames)
        except zmq.Again:
            self.kill()
            return False
        return True

    def send_request(self, meta: dict[str, Any] | None, frames: list[Any], owner: Any) -> bool:
        return self.send(wire.encode(wire.REQUEST, meta, frames))  # no shared region (transport.py)

    def done(self, request: Any) -> None:
        pass

    def watch_output(self, pipes: dict[str, int]) -> None:
        pass

    def unread_output(self) -> dict[str, str]:
        return {}

    def requests_running(self) -> int | None:
        return max(0, self.begun - self.requests_done)

    def exit_info(self, timeout: float = 1.0) -> ExitInfo:
        return ExitInfo(self.exitcode)

    def signal(self, signum: int) -> None:
        self.signals.append(signum)

    def kill(self) -> None:
        self.die(-signals.SIGKILL)

    def request_stop(self) -> None:
        self.die(0)

    def stop(self, grace: float = 1.0) -> None:
        self.close()

    def close(self) -> None:
        self.state = WorkerState.GONE
        self.link.close(linger=0)
        self.side.close(linger=0)
        self.die(0)
        os.close(self.sentinel)  # as a real one's, when its Process is collected: the number is reused

    # the test's side
    def die(self, exitcode: int) -> None:
        """The process ends: its sentinel becomes readable."""
        if self.exitcode is None:
            self.exitcode = exitcode
            os.close(self._alive_w)  # once: the number may be another worker's afterwards


class WorkerEnd:
    """The worker's end of a fake worker's link: what the test says as the worker."""

    def __init__(self, ctx: zmq.Context, worker: FakeWorker, signer: Signer) -> None:
        self.worker = worker
        self.signer = signer
        self.sock = ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(worker.endpoint)
        self.side = ctx.socket(zmq.PAIR)
        self.side.setsockopt(zmq.LINGER, 0)
        self.side.connect(worker.endpoint + wire.SIDE_SUFFIX)

    def send(self, kind: bytes, meta: dict[str, Any] | None = None, payload: list[Any] | None = None) -> None:
        wire.send_frames(self.sock, wire.encode(kind, meta, payload or []))

    def ready(self) -> None:
        self.send(wire.READY, {"version": wire.PROTOCOL_VERSION, "pid": self.worker.pid})

    def receive(self, timeout_ms: int = 0, side: bool = False) -> wire.LinkMessage | None:
        """The next message the supervisor sent on the link (``side``: on the side socket)."""
        sock = self.side if side else self.sock
        if not sock.poll(timeout_ms):
            return None
        return wire.decode(sock.recv_multipart(copy=False))

    def done(self, request: wire.LinkMessage, content: dict[str, Any] | None, **meta: Any) -> None:
        """DONE for a REQUEST: the signed reply (none for comm messages)."""
        header = wire.as_bytes(request.payload[wire.VERIFIED.header])
        msg_type = json.loads(header)["msg_type"]
        frames: list[Any] = []
        if content is not None and msg_type.endswith("_request"):
            frames = self.signer.frames(msg_type[: -len("request")] + "reply", content, header)
        self.send(wire.DONE, {"status": (content or {}).get("status", "ok"), **meta}, frames)


class Harness:
    """A SupervisorLoop with fake workers and a frontend client, stepped by the test."""

    def __init__(self, standby: int = 1, interrupt_grace: float = 5.0, overlap_after: float = 1.0) -> None:
        self.ctx = zmq.Context()
        self.signer = Signer(KEY, "hmac-sha256", "kernel-session")
        self.sockets = KernelSockets.bind_all(self.ctx, "tcp", "127.0.0.1", {})
        self.workers: list[FakeWorker] = []
        self.ends: dict[int, WorkerEnd] = {}
        config = WorkerConfig(key=KEY, signature_scheme="hmac-sha256", session_id="kernel-session",
                              connection_file="", crash_log="/nonexistent/crash")
        self.launcher = FakeLauncher()
        self.loop = SupervisorLoop(
            ctx=self.ctx, signer=self.signer, verifier=Verifier(self.signer), sockets=self.sockets,
            private_dir="/nonexistent", worker_config=config,
            settings=Settings(standby_workers=standby, interrupt_grace=interrupt_grace,
                              subshell_overlap_after=overlap_after),
            start_worker=self._start, launcher=self.launcher)  # type: ignore[arg-type]
        self.session = Session(key=KEY, signature_scheme="hmac-sha256")
        self.shell = self._client(zmq.DEALER, "shell")
        self.control = self._client(zmq.DEALER, "control")
        self.iopub = self.ctx.socket(zmq.SUB)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub.connect(f"tcp://127.0.0.1:{self.sockets.ports['iopub']}")
        self.until(self._welcomed, "the iopub subscription")
        self.loop.pool.ensure()

    def _client(self, kind: int, channel: str) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{self.sockets.ports[channel]}")
        return sock

    def _welcomed(self) -> bool:
        if self.iopub.poll(0):
            self.iopub.recv_multipart()
            return True
        return False

    def _start(self, number: int, context: Any) -> FakeWorker:
        worker = FakeWorker(self.ctx, number, self._config())
        self.workers.append(worker)
        self.ends[number] = WorkerEnd(self.ctx, worker, self.signer)
        return worker

    def _config(self) -> WorkerConfig:
        return WorkerConfig(key=KEY, signature_scheme="hmac-sha256", session_id="kernel-session",
                            connection_file="", crash_log="/nonexistent/crash")

    # ------------------------------------------------------------- stepping
    def step(self) -> None:
        self.loop._poll_once(max_wait_ms=20)

    def until(self, predicate: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            self.loop._poll_once(max_wait_ms=10)
        raise AssertionError(f"timed out waiting for {what}")

    def bring_up(self, worker: FakeWorker) -> WorkerEnd:
        """The worker says READY (and, if it becomes active, ACTIVATED)."""
        end = self.ends[worker.number]
        end.ready()
        self.until(lambda: worker.state is not WorkerState.STARTING, f"worker {worker.number} READY")
        if self.loop.pool.active is worker:
            activate = self.until(lambda: end.receive(), "ACTIVATE")
            assert activate.kind == wire.ACTIVATE
            end.send(wire.ACTIVATED)
            self.until(lambda: worker.state is WorkerState.ACTIVE, "ACTIVE")
        return end

    def active_end(self) -> WorkerEnd:
        active = self.loop.pool.active
        assert active is not None
        return self.ends[active.number]

    # ------------------------------------------------------------- frontend
    def request(self, msg_type: str, content: dict[str, Any] | None = None, channel: str = "shell",
                subshell_id: str | None = None) -> str:
        sock = self.shell if channel == "shell" else self.control
        msg = self.session.msg(msg_type, content or {})
        if subshell_id is not None:
            msg["header"]["subshell_id"] = subshell_id
        self.session.send(sock, msg)
        return str(msg["header"]["msg_id"])

    def reply(self, msg_id: str, channel: str = "shell") -> dict[str, Any]:
        sock = self.shell if channel == "shell" else self.control

        def got() -> dict[str, Any] | None:
            if sock.poll(0):
                _, msg = self.session.feed_identities(sock.recv_multipart())
                return self.session.deserialize(msg)
            return None

        msg = self.until(got, f"the reply to {msg_id}")
        assert msg["parent_header"]["msg_id"] == msg_id
        return msg

    def no_reply(self, channel: str = "shell", steps: int = 5) -> bool:
        sock = self.shell if channel == "shell" else self.control
        for _ in range(steps):
            self.step()
            if sock.poll(0):
                return False
        return True

    def iopub_messages(self) -> list[dict[str, Any]]:
        self.step()
        out = []
        while self.iopub.poll(10):
            _, msg = self.session.feed_identities(self.iopub.recv_multipart())
            out.append(self.session.deserialize(msg))
        return out

    def close(self) -> None:
        self.loop.pool.close()
        os.close(self.loop._wake_r)
        os.close(self.loop._wake_w)
        self.loop.sockets.close()
        for end in self.ends.values():
            end.sock.close(linger=0)
            end.side.close(linger=0)
        for s in (self.shell, self.control, self.iopub):
            s.close(linger=0)
        self.ctx.term()
