"""The supervisor's event loop: what arrives where.

Everything here runs in the supervisor's main thread, which owns shell,
control, stdin, iopub and every worker link.  One ``zmq.Poller`` watches those
sockets, the workers' process sentinels, the fork server's answer and a
signal wake-up pipe, so control requests and worker deaths are handled at once
whatever the worker is doing.  The loop only routes; each room does one job:

* flow.py: a request's busy, reply and idle, and the shell queue;
* answers.py: the requests the supervisor answers itself;
* subshells.py: create/delete/list of subshells (their lanes are flow.py's);
* stdin_relay.py: input() prompts and replies;
* debug_relay.py: debug_request to the worker's debugger, the session across workers;
* comm_relay.py: the registry of open comms;
* pool.py: the active worker and its spares;
* recovery.py: what a worker's death means for the requests;
* housekeeping.py: timers, the memory guard, heap trimming, stale directories.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import zmq

from .. import pipes, wire
from ..signing import Signer
from ..spawn import WorkerConfig
from .answers import Answers
from .comm_relay import CommRelay
from .debug_relay import DebugRelay
from .flow import RequestFlow
from .housekeeping import Housekeeping, Timers
from .launcher import WorkerLauncher
from .outbox import Outbox
from .pool import StartWorker, WorkerPool
from .recovery import Recovery
from .resources import MemoryGuard
from .shell_queue import ShellQueue
from .sockets import Incoming, KernelSockets, Verifier
from .stdin_relay import StdinRelay
from .subshells import Subshells
from .worker_process import WorkerProcess, WorkerState

log = logging.getLogger("relaykernel.supervisor")


@dataclass(frozen=True)
class Settings:
    """The supervisor's configuration (traitlets options of app.py), as the loop uses it."""

    standby_workers: int = 1
    interrupt_grace: float = 5.0
    memory_guard: MemoryGuard = field(default_factory=MemoryGuard)
    inplace_restart: bool = True
    log_level: int = logging.WARNING
    #: seconds another lane's request must have run before a request starts beside it (flow.py)
    subshell_overlap_after: float = 1.0


class SupervisorLoop:
    """The running kernel: polls every socket and routes what arrives to its room."""

    def __init__(self, *, ctx: zmq.Context, signer: Signer, verifier: Verifier, sockets: KernelSockets,
                 private_dir: str, worker_config: WorkerConfig, settings: Settings,
                 first_worker: WorkerProcess | None = None, held: list[Incoming] | None = None,
                 start_worker: StartWorker | None = None, launcher: WorkerLauncher | None = None) -> None:
        """``start_worker`` and ``launcher`` replace how workers start (tests: fake workers)."""
        self.sockets = sockets
        self.verifier = verifier
        self.settings = settings
        self.out = Outbox(sockets, signer)
        #: requests that arrived before the loop ran (the early responder kept them)
        self._held = list(held or ())
        self._stopping = False
        self._pending_signals: list[int] = []
        self.poller = zmq.Poller()
        for s in (sockets.control, sockets.shell, sockets.stdin, sockets.iopub):
            self.poller.register(s, zmq.POLLIN)
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self.poller.register(self._wake_r, zmq.POLLIN)
        self.timers = Timers()
        self.comms = CommRelay()
        self.flow = RequestFlow(self.out, self.comms, settings.subshell_overlap_after, later=self.timers.after)
        self.flow.redispatch = self._dispatch
        self.pool = WorkerPool(ctx=ctx, private_dir=private_dir, config=worker_config, poller=self.poller,
                               timers=self.timers, standby=settings.standby_workers,
                               first_worker=first_worker, start=start_worker, launcher=launcher)
        self.pool.activation = self._activation
        self.recovery = Recovery(self.pool, self.flow, self.comms, self._drain_link,
                                 lambda: self._drain(sockets.shell, "shell"))
        self.chores = Housekeeping(self.timers, self.pool, self.flow.queue, settings.memory_guard,
                                   private_dir, self.recovery.replace_active, self.out)
        self.answers = Answers(flow=self.flow, comms=self.comms, pool=self.pool, recovery=self.recovery,
                               timers=self.timers, stop=self.stop, interrupt_grace=settings.interrupt_grace,
                               inplace_restart=settings.inplace_restart)
        self.subshells = Subshells(self.flow, self.pool)
        self.answers.control.update({"create_subshell_request": self.subshells.create,
                                     "delete_subshell_request": self.subshells.delete,
                                     "list_subshell_request": self.subshells.list})
        self.stdin = StdinRelay(sockets.stdin, self.pool, self.flow)
        self.debug = DebugRelay(self.flow, self.pool, self._dispatch, self.timers.after)
        self.recovery.active_gone = self.debug.worker_gone
        self.link_handlers: dict[bytes, Callable[[WorkerProcess, wire.LinkMessage], None]] = {
            wire.READY: self._on_ready,
            wire.IOPUB: self._on_iopub,
            wire.COMM: self._on_worker_comm,
            wire.DONE: self._on_done,
            wire.STDIN: self.stdin.prompt,
            wire.TARGET: self._on_target,
            wire.ACTIVATED: self._on_activated,
            wire.SNAPSHOT: self.pool.snapshot_taken,
            wire.DEBUG_REPLY: self.debug.reply,
        }

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Serve until a shutdown_request or SIGTERM; then stop every worker."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._record_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.pool.ensure()
        for msg in self._held:
            self._route(msg)
        self._held.clear()
        self.chores.start()
        try:
            while not self._stopping:
                self._poll_once()
        finally:
            self._close()

    def stop(self) -> None:
        self._stopping = True

    def _poll_once(self, max_wait_ms: int | None = None) -> None:
        """Wait for events (until the next timer is due, or at most ``max_wait_ms``) and handle them."""
        wait = self.timers.timeout_ms()
        if max_wait_ms is not None:
            wait = max_wait_ms if wait is None else min(wait, max_wait_ms)
        events = dict(self.poller.poll(wait))
        s = self.sockets
        if events.pop(self._wake_r, 0):
            # before control: jupyter_client interrupts, then asks for a restart
            self._handle_signals()
        if events.pop(s.control, 0):
            self._drain(s.control, "control")
        if events.pop(s.iopub, 0):
            self.out.welcome()
        if events.pop(self.pool.launcher.wake_fd, 0):  # the fork server answered (or failed)
            self.pool.fork_server_answered()
        for key in list(events):
            if isinstance(key, int) and key in self.pool.by_sentinel:
                self.recovery.worker_exited(self.pool.by_sentinel[key])
            elif key in self.pool.by_link:
                self._drain_link(self.pool.by_link[key])
        if events.get(s.stdin):
            self._drain(s.stdin, "stdin")
        if events.get(s.shell):
            self._drain(s.shell, "shell")
        self.timers.run_due()

    def _drain(self, sock: zmq.Socket, channel: str, budget: int = 64) -> None:
        """Read what is waiting on a frontend socket; bad input is logged, never raised."""
        for msg in self.verifier.waiting(sock, channel, budget):
            try:
                self._route(msg)
            except Exception:
                log.exception("error handling %s on %s", msg.msg_type, channel)

    def _route(self, msg: Incoming) -> None:
        if msg.problem is not None:
            self.flow.reject(msg)
        elif msg.channel == "stdin":
            if msg.msg_type == "input_reply":
                self.stdin.input_reply(msg)
        elif msg.channel == "control" and msg.msg_type == "debug_request":
            self.debug.request(msg)  # busy now, idle when the worker replies
        elif msg.channel == "control" and msg.msg_type not in self.answers.control:
            if msg.msg_type in wire.WORKER_REQUESTS:
                self.flow.queue.push_next(msg)  # ipykernel answers these on control too
                self._dispatch()
            else:
                self._answer_here(msg, self._unknown)
        elif msg.channel == "control":
            self._answer_here(msg, self.answers.control[msg.msg_type])
        elif msg.msg_type in self.answers.shell:  # answered here, at once, even mid-cell
            self._answer_here(msg, self.answers.shell[msg.msg_type])
        elif self.comms.is_widget_control(msg):
            self._answer_here(msg, self._widget_control)
        else:
            queue = self._lane_of(msg)
            if queue is None:
                self._answer_here(msg, self.subshells.unknown)
                return
            self.comms.from_frontend(msg)
            self.chores.after_large(msg.buffers)
            queue.push(msg)
            self._dispatch()

    def _lane_of(self, msg: Incoming) -> ShellQueue | None:
        """The lane a shell message waits in: its subshell's, the one beside the main
        shell's running cell for comm messages, or the main shell's.  None: a
        request for a subshell that does not exist (a comm message for one runs in
        the main shell: it has no reply to carry an error, and nothing is lost)."""
        subshell_id = msg.header.get("subshell_id")
        if subshell_id is not None:
            queue = self.flow.lanes.get(subshell_id) if isinstance(subshell_id, str) else None
            if queue is not None:
                return queue
            if msg.msg_type.endswith("_request"):
                return None
            log.warning("%s for unknown subshell %r runs in the main shell", msg.msg_type, subshell_id)
        if msg.msg_type in wire.COMM_TYPES and self.flow.cell_running():
            return self.flow.beside
        return self.flow.queue

    def _answer_here(self, msg: Incoming, handler: Callable[[Incoming], None]) -> None:
        """Busy, the handler's reply, idle; then busy again if a request is still
        executing, so the kernel never looks idle mid-cell (flow.still_busy)."""
        self.out.status("busy", msg)
        handler(msg)
        self.out.status("idle", msg)
        self.flow.still_busy()

    def _unknown(self, msg: Incoming) -> None:
        """A request type nobody here handles still gets its one reply: an error that says so."""
        log.warning("unknown %s message type %r", msg.channel, msg.msg_type)
        self.out.reply(msg, wire.unknown_request_error(msg.msg_type, msg.channel))

    def _widget_control(self, msg: Incoming) -> None:
        answer = self.comms.widget_control(msg)
        if answer is not None:
            self.out.publish(msg, "comm_msg", *answer)

    def _dispatch(self) -> None:
        self.flow.dispatch(None if self.debug.replaying else self.pool.active)

    # ------------------------------------------------------- worker messages
    def _drain_link(self, worker: WorkerProcess, budget: int = 256) -> None:
        for _ in range(budget):
            if worker.state is WorkerState.GONE:
                return
            try:
                frames = wire.recv_frames(worker.link)
            except zmq.Again:
                return
            try:
                lm = wire.decode(frames)
                handler = self.link_handlers.get(lm.kind)
                if handler is None:
                    raise wire.WireError(f"unknown link kind {lm.kind!r}")
                handler(worker, lm)
            except Exception as e:
                log.exception("bad link message from worker %s", worker.number)
                if worker is self.pool.active:  # what it said is lost: the user must know
                    self.out.stream(self.flow.queue.current, "stderr", "relaykernel: a message from the "
                                    f"worker could not be read and was lost ({e}).\n")

    def _on_ready(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        meta = cast(wire.ReadyMeta, lm.meta)
        if meta.get("version") != wire.PROTOCOL_VERSION:
            log.error("worker speaks link version %r, expected %r", meta.get("version"), wire.PROTOCOL_VERSION)
            worker.kill()
            return
        output_pipes = meta.get("output_pipes")
        if isinstance(output_pipes, dict):
            worker.watch_output(output_pipes)
        self.pool.ready(worker)

    def _activation(self, worker: WorkerProcess) -> wire.ActivateMeta:
        # Comms open now outlived their worker (or there were none): the new
        # worker adopts them when it registers their targets.  It imports
        # ipywidgets itself if there are widgets to bring back.
        worker.orphans = self.comms.open_ids()
        return {"execution_count": self.flow.execution_count, "imports": self.comms.imports_for_new_worker(),
                "log_level": self.settings.log_level,
                "memory_soft_limit": self.settings.memory_guard.soft_limit}

    def _on_activated(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        if self.pool.activated(worker):
            self.debug.activated(worker)
            if self.flow.lanes:  # they outlived the last worker
                self.subshells.tell_worker()
            self._dispatch()

    def _on_iopub(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        if worker is self.pool.active:
            if lm.meta:  # the worker began a cell
                queue = self.flow.lane(lm.meta.get("subshell_id"))
                if queue is not None and queue.current is not None:
                    queue.current.started = True
            wire.send_frames(self.sockets.iopub, lm.payload)

    def _on_worker_comm(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        if worker is not self.pool.active:
            return
        self.comms.from_worker(lm)
        self.chores.after_large(lm.payload[wire.PUBLISHED.buffers:])
        wire.send_frames(self.sockets.iopub, lm.payload)

    def _on_done(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        if worker is not self.pool.active:
            return
        if "subshell_id" not in lm.meta:  # progress.py counts the main shell's requests only
            worker.requests_done += 1
        request = self.flow.finished(lm)
        if request is None:
            return
        worker.done(request)
        if request.msg_type == "comm_close":
            self.comms.frontend_closed(request.content.get("comm_id", ""))
        self.chores.trim_later()
        if cast(wire.DoneMeta, lm.meta).get("exit"):
            # exit() in a cell: ipykernel's process ends and the frontend restarts it;
            # a fresh worker is the same, without the wait (and comms are kept)
            self.recovery.restart()
        self._dispatch()

    def _on_target(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        """A target appeared in the worker: hand it the preserved comms it can adopt."""
        meta = cast(wire.TargetMeta, lm.meta)
        name = str(meta.get("name"))
        if not meta.get("registered") or worker is not self.pool.active:
            return
        adopt = self.comms.adoption(name, worker.orphans)
        if adopt is not None:
            worker.send(adopt)

    # ------------------------------------------------------------- signals
    def _record_signal(self, signum: int, frame: Any) -> None:
        self._pending_signals.append(signum)

    def _handle_signals(self) -> None:
        pipes.drain(self._wake_r)
        signals, self._pending_signals = self._pending_signals, []
        for signum in signals:
            if signum == signal.SIGINT:
                log.info("SIGINT: interrupting the running cell")
                self.answers.interrupt()
            elif signum == signal.SIGHUP:
                log.info("SIGHUP: restarting the worker in place")
                self.recovery.restart()
            elif signum == signal.SIGTERM:
                log.info("SIGTERM: shutting down")
                self._stopping = True

    def _close(self) -> None:
        self.pool.close()
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
