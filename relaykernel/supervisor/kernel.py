"""The supervisor's event loop: routes frontend requests to the worker and back.

Everything here runs in the supervisor's main thread, which owns shell,
control, stdin, iopub and every worker link.  One ``zmq.Poller`` watches those
sockets, the workers' process sentinels and a signal wake-up pipe, so control
requests and worker deaths are handled at once whatever the worker is doing.
Handlers live in tables keyed by message type (frontend) or link kind (worker).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import zmq

from .. import wire
from ..heap import release_freed_memory
from ..signing import Signer
from ..spawn import WorkerConfig
from .comm_relay import CommRelay
from .kernel_info import kernel_info_content
from .launcher import WARM_UP_LIMIT, ServerState, WorkerLauncher
from .outbox import Outbox
from .private_dir import remove_abandoned
from .recovery import WORKER_DIED, Death, read_crash_log
from .resources import GIB, MemoryGuard, Usage
from .shell_queue import ShellQueue, stops_on_error
from .sockets import Incoming, KernelSockets, Verifier
from .worker_process import WorkerProcess, WorkerState

log = logging.getLogger("relaykernel.supervisor")

#: Seconds between two samples of the worker's memory (when a limit is set).
MEMORY_CHECK_INTERVAL = 0.2
RESTARTED = "the kernel was restarted"
#: Buffers above this size (bytes) make the supervisor trim its heap afterwards
#: (as every finished request does).
LARGE_BUFFER = 1 << 18
#: Seconds without requests or large buffers before the heap is trimmed.
TRIM_QUIET = 3.0
#: Requests that change nothing, so that one whose reply a dying worker lost is
#: asked again of the next worker rather than answered with an error.
REPEATABLE = frozenset({"complete_request", "inspect_request", "is_complete_request", "history_request"})
#: Consecutive workers that may die before READY (or spares within
#: SPARE_DEATH_WINDOW seconds) before new ones start only every 5 s.
MAX_START_FAILURES = 3
SPARE_DEATH_WINDOW = 30.0
#: A dead worker's link is read until it has been quiet this long (ms): what the
#: worker sent just before dying may still be passing through the IO threads.
DEAD_LINK_QUIET_MS = 10
#: Seconds after start before killed supervisors' private directories are removed
#: (private_dir.py): off the path of the first requests.
ABANDONED_DIRS_DELAY = 3.0


class SupervisorLoop:
    """The running kernel: owns the sockets, the shell queue, the comm registry and the workers."""

    def __init__(
        self,
        *,
        ctx: zmq.Context,
        signer: Signer,
        verifier: Verifier,
        sockets: KernelSockets,
        private_dir: str,
        worker_config: WorkerConfig,
        standby_workers: int = 1,
        interrupt_grace: float = 5.0,
        memory_guard: MemoryGuard | None = None,
        inplace_restart: bool = True,
        first_worker: WorkerProcess | None = None,
        log_level: int = logging.WARNING,
        held: list[Incoming] | None = None,
    ) -> None:
        self.ctx = ctx
        self.sockets = sockets
        self.private_dir = private_dir
        self.worker_config = worker_config
        self.standby_workers = standby_workers
        self.interrupt_grace = interrupt_grace
        self.memory_guard = memory_guard or MemoryGuard()
        self.inplace_restart = inplace_restart
        self.usage = Usage()
        self._soft_limit_hit: Incoming | None = None
        self._trim_scheduled = False
        self._last_busy = 0.0
        self.verifier = verifier
        self.out = Outbox(sockets, signer)
        #: requests that arrived before the loop ran (the early responder kept them)
        self._held = list(held or ())
        self.queue = ShellQueue()
        self.comms = CommRelay()
        self.execution_count = 1  # the next cell's number; survives worker replacement
        self.active: WorkerProcess | None = None
        self.spares: list[WorkerProcess] = []
        self.log_level = log_level
        self._numbers = iter(range(2 if first_worker else 1, 1 << 30))
        self._start_failures = 0
        self._spare_deaths: list[float] = []  # when spares died, over SPARE_DEATH_WINDOW
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._stopping = False
        self._pending_signals: list[int] = []
        self.poller = zmq.Poller()
        for s in (sockets.control, sockets.shell, sockets.stdin, sockets.iopub):
            self.poller.register(s, zmq.POLLIN)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.poller.register(self._wake_r.fileno(), zmq.POLLIN)
        self.launcher = WorkerLauncher(worker_config.inherited_tunables, private_dir)
        self.poller.register(self.launcher.wake_fd, zmq.POLLIN)
        self._by_link: dict[zmq.Socket, WorkerProcess] = {}
        self._by_sentinel: dict[int, WorkerProcess] = {}
        if first_worker is not None:
            self._adopt_worker(first_worker)
        self.shell_handlers: dict[str, Callable[[Incoming], None]] = {
            "kernel_info_request": self._kernel_info,
            "comm_info_request": self._comm_info,
            "shutdown_request": self._shutdown,  # its channel before protocol 5.1; ipykernel takes it too
        }
        self.control_handlers: dict[str, Callable[[Incoming], None]] = {
            "kernel_info_request": self._kernel_info,
            "comm_info_request": self._comm_info,
            "shutdown_request": self._shutdown,
            "interrupt_request": self._interrupt_request,
            "usage_request": self._usage,
            "debug_request": self._no_debugger,
        }
        self.link_handlers: dict[bytes, Callable[[WorkerProcess, wire.LinkMessage], None]] = {
            wire.READY: self._on_ready,
            wire.IOPUB: self._on_iopub,
            wire.COMM: self._on_worker_comm,
            wire.DONE: self._on_done,
            wire.STDIN: self._on_stdin,
            wire.TARGET: self._on_target,
            wire.ACTIVATED: self._on_activated,
        }

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Serve until a shutdown_request or SIGTERM; then stop every worker."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._record_signal)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._ensure_workers()
        for msg in self._held:
            self._route(msg)
        self._held.clear()
        if self.memory_guard.enabled:
            self._timers.append((time.monotonic(), self._check_memory))
        self._timers.append((time.monotonic() + ABANDONED_DIRS_DELAY, self._remove_abandoned_dirs))
        try:
            while not self._stopping:
                self._poll_once()
        finally:
            self._close()

    def _poll_once(self) -> None:
        events = dict(self.poller.poll(self._next_timeout()))
        s = self.sockets
        if events.pop(self._wake_r.fileno(), 0):
            # before control: jupyter_client interrupts, then asks for a restart
            self._handle_signals()
        if events.pop(s.control, 0):
            self._drain(s.control, "control")
        if events.pop(s.iopub, 0):
            self.out.welcome()
        if events.pop(self.launcher.wake_fd, 0):  # the fork server answered (or failed)
            self.launcher.acknowledge()
            self._ensure_workers()
        for key in list(events):
            if isinstance(key, int) and key in self._by_sentinel:
                self._on_worker_exit(self._by_sentinel[key])
            elif key in self._by_link:
                self._drain_link(self._by_link[key])
        if events.get(s.stdin):
            self._drain(s.stdin, "stdin")
        if events.get(s.shell):
            self._drain(s.shell, "shell")
        self._run_timers()

    def _drain(self, sock: zmq.Socket, channel: str, budget: int = 64) -> None:
        """Read what is waiting on a frontend socket; bad input is logged, never raised."""
        for msg in self.verifier.waiting(sock, channel, budget):
            try:
                self._route(msg)
            except Exception:
                log.exception("error handling %s on %s", msg.msg_type, channel)

    def _route(self, msg: Incoming) -> None:
        if msg.problem is not None:
            self._reject(msg)
        elif msg.channel == "control":
            handler = self.control_handlers.get(msg.msg_type)
            if handler is None and msg.msg_type in wire.WORKER_REQUESTS:
                self.queue.push_next(msg)  # ipykernel answers these on control too
                self._dispatch()
                return
            self.out.status("busy", msg)
            if handler is None:
                self._unknown(msg)
            else:
                handler(msg)
            self.out.status("idle", msg)
        elif msg.channel == "stdin":
            if msg.msg_type == "input_reply":
                self._input_reply(msg)
        elif msg.msg_type in self.shell_handlers:  # answered here, at once, even mid-cell
            self.out.status("busy", msg)
            self.shell_handlers[msg.msg_type](msg)
            self.out.status("idle", msg)
        elif self.comms.is_control(msg):
            self.out.status("busy", msg)
            answer = self.comms.control(msg)
            if answer is not None:
                self.out.publish(msg, "comm_msg", *answer)
            self.out.status("idle", msg)
        else:
            self.comms.from_frontend(msg)
            self._after_large(msg.buffers)
            self.queue.push(msg)
            self._dispatch()

    def _reject(self, msg: Incoming) -> None:
        """A signed message that cannot be handled: a request gets an error reply, the rest is dropped."""
        log.warning("%s on %s not handled: %s", msg.msg_type, msg.channel, msg.problem)
        if msg.channel not in ("shell", "control") or not msg.msg_type.endswith("_request"):
            return
        error = wire.error_reply("BadMessage", f"relaykernel could not read this {msg.msg_type}: {msg.problem}")
        if msg.msg_type == "execute_request":
            error["execution_count"] = self.execution_count
        self._answer(msg, error)

    def _answer(self, request: Incoming, content: dict[str, Any]) -> None:
        """Answer a request here, at once, without the worker: busy (once), reply, idle."""
        self._announce(request)
        self.out.reply(request, content)
        self.out.status("idle", request)

    def _unknown(self, msg: Incoming) -> None:
        """A request type nobody here handles still gets its one reply: an error that says so."""
        log.warning("unknown %s message type %r", msg.channel, msg.msg_type)
        self.out.reply(msg, wire.unknown_request_error(msg.msg_type, msg.channel))

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
            except Exception:
                log.exception("bad link message from worker %s", worker.number)

    # ------------------------------------------------------------- the queue
    def _dispatch(self) -> None:
        """Send what the queue allows to the worker; the first one sent is now running."""
        worker = self.active
        while worker is not None and worker.state is WorkerState.ACTIVE:
            request = self.queue.next()
            if request is None:
                return
            worker.send(wire.encode(wire.REQUEST, None, request.frames))
            if self.queue.current is request:
                self._started(request)

    def _started(self, request: Incoming) -> None:
        """The worker begins this request: busy goes out before any of its outputs
        (published after the request left for the worker, so the worker starts
        ~30 us sooner: its outputs come back through this thread, later)."""
        self._announce(request)
        if request.msg_type == "comm_msg" and request.content.get("comm_id") not in self.comms:
            log.warning("comm_msg for unknown comm_id %r", request.content.get("comm_id"))

    def _announce(self, request: Incoming) -> None:
        """Busy for this request, once: one asked again of a new worker was announced already."""
        if not request.announced:
            request.announced = True
            self.out.status("busy", request)

    def _reply_socket(self, msg: Incoming) -> zmq.Socket:
        return self.sockets.control if msg.channel == "control" else self.sockets.shell

    def _on_done(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        if worker is not self.active:
            return
        worker.requests_done += 1
        request = self.queue.finish()
        if request is None:
            log.warning("worker finished a request the supervisor did not send")
            return
        if lm.payload:
            wire.send_frames(self._reply_socket(request), request.idents + list(lm.payload))
        if "execution_count" in lm.meta:
            self.execution_count = int(lm.meta["execution_count"])
        if request.msg_type == "comm_close":
            self.comms.frontend_closed(request.content.get("comm_id", ""))
        self.out.status("idle", request)
        self._trim_later()
        if (lm.meta.get("status") == "error" and request.msg_type == "execute_request"
                and stops_on_error(request)):
            self._abort(self.queue.take_executes())
        if self.queue.current is not None:
            self._started(self.queue.current)  # already sent (pipelined); running now
        if lm.meta.get("exit"):
            # exit() in a cell: ipykernel's process ends and the frontend restarts it;
            # a fresh worker is the same, without the wait (and comms are kept)
            self._restart()
        self._dispatch()

    def _abort(self, requests: list[Incoming]) -> None:
        for request in requests:
            self._answer(request, {"status": "aborted"})

    # ------------------------------------------------------- worker messages
    def _on_ready(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        if lm.meta.get("version") != wire.PROTOCOL_VERSION:
            log.error("worker speaks link version %r, expected %r", lm.meta.get("version"), wire.PROTOCOL_VERSION)
            worker.kill()
            return
        worker.state = WorkerState.READY
        pipes = lm.meta.get("output_pipes")
        if isinstance(pipes, dict):
            worker.watch_output(pipes)
        self._start_failures = 0
        log.debug("worker %s ready in %.3fs", worker.number, time.monotonic() - worker.started_at)
        self._ensure_workers()

    def _on_iopub(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        if worker is self.active:
            if lm.meta and self.queue.current is not None:  # the worker began the cell
                self.queue.current.started = True
            wire.send_frames(self.sockets.iopub, lm.payload)

    def _on_worker_comm(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        if worker is not self.active:
            return
        self.comms.from_worker(lm)
        self._after_large(lm.payload[7:])
        wire.send_frames(self.sockets.iopub, lm.payload)

    def _on_stdin(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        request = self.queue.current
        if worker is self.active and request is not None:
            # payload: <IDS|MSG>, hmac, header, ...: the reply must answer this prompt
            request.prompt_id = json.loads(wire.as_bytes(lm.payload[2])).get("msg_id")
            wire.send_frames(self.sockets.stdin, request.idents + list(lm.payload))

    def _input_reply(self, msg: Incoming) -> None:
        """Pass an input_reply to the worker only if it answers the open prompt.

        A reply sent after its prompt was interrupted would otherwise answer the
        next input() of a later cell.  A reply without a parent (jupyter_client's
        ``KernelClient.input``) answers whichever prompt is open."""
        request = self.queue.current
        if self.active is None or request is None or request.prompt_id is None:
            log.warning("input_reply dropped: no input() is waiting for one")
            return
        if msg.parent.get("msg_id", request.prompt_id) != request.prompt_id:
            log.warning("input_reply dropped: it answers another prompt than the open one")
            return
        request.prompt_id = None
        self.active.send(wire.encode(wire.INPUT_REPLY, None, msg.frames))

    def _on_target(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        """A target appeared in the worker: hand it the preserved comms it can adopt."""
        name = str(lm.meta.get("name"))
        if not lm.meta.get("registered") or worker is not self.active:
            return
        adopt = self.comms.adoption(name, worker.orphans)
        if adopt is not None:
            worker.send(adopt)

    # ---------------------------------------------------- immediate handlers
    def _kernel_info(self, msg: Incoming) -> None:
        self.out.reply(msg, kernel_info_content())

    def _no_debugger(self, msg: Incoming) -> None:
        """kernel_info says ``debugger: false``; a client that asks anyway gets a failed
        Debug Adapter Protocol response rather than a wait for a reply that never comes."""
        self.out.reply(msg, {"type": "response", "seq": 0, "request_seq": msg.content.get("seq", 0),
                             "success": False, "command": msg.content.get("command", ""),
                             "message": "relaykernel has no debugger"})

    def _comm_info(self, msg: Incoming) -> None:
        target = msg.content.get("target_name")
        self.out.reply(msg, {"status": "ok", "comms": self.comms.info(target or None)})

    def _shutdown(self, msg: Incoming) -> None:
        restart = bool(msg.content.get("restart", False))
        content = {"status": "ok", "restart": restart}
        self.out.reply(msg, content)
        self.out.publish(msg, "shutdown_reply", content)  # for every frontend, as the spec asks
        if restart and self.inplace_restart:
            self._restart()
        else:
            self._stopping = True

    def _after_large(self, buffers: Any) -> None:
        if any(len(b) > LARGE_BUFFER for b in buffers):
            self._trim_later()

    def _trim_later(self) -> None:
        """Give freed memory back once the kernel has been quiet for TRIM_QUIET seconds.

        The heap keeps what messages freed (``heap.keep_freed_memory``), so the
        next large buffer or output burst lands in pages already mapped; giving
        them back between two transfers would make each one fault them in again."""
        self._last_busy = time.monotonic()
        if not self._trim_scheduled:
            self._trim_scheduled = True
            self._timers.append((self._last_busy + TRIM_QUIET, self._trim_when_quiet))

    def _trim_when_quiet(self) -> None:
        quiet_since = time.monotonic() - self._last_busy
        if quiet_since < TRIM_QUIET:
            self._timers.append((time.monotonic() + TRIM_QUIET - quiet_since, self._trim_when_quiet))
            return
        self._trim_scheduled = False
        release_freed_memory()

    def _usage(self, msg: Incoming) -> None:
        self.out.reply(msg, self.usage.reply(self.active.pid if self.active else None))

    def _check_memory(self) -> None:
        """Every MEMORY_CHECK_INTERVAL: interrupt at the soft limit, replace at the hard one."""
        self._timers.append((time.monotonic() + MEMORY_CHECK_INTERVAL, self._check_memory))
        worker = self.active
        if worker is None or worker.state is not WorkerState.ACTIVE:
            return
        level, rss = self.memory_guard.check(worker.pid)
        if level == "hard":
            limit = self.memory_guard.hard_limit / GIB
            self._replace_active(f"memory limit of {limit:g} GiB exceeded (the worker used "
                                 f"{rss / GIB:.2f} GiB), so the worker was replaced")
        elif (level == "soft" and (request := self.queue.current) is not None and request.started
              and self._soft_limit_hit is not request):
            self._soft_limit_hit = request
            log.warning("worker %s passed the soft memory limit (%.2f GiB)", worker.number, rss / GIB)
            try:
                os.kill(worker.pid, signal.SIGUSR1)  # the worker raises MemoryError in the cell
            except ProcessLookupError:
                pass

    def _interrupt_request(self, msg: Incoming) -> None:
        self.interrupt()
        self.out.reply(msg, {"status": "ok"})

    def interrupt(self) -> None:
        """SIGINT the running cell; replace the worker if it has not stopped after the grace period."""
        worker, request = self.active, self.queue.current
        if worker is None:
            return
        worker.signal(signal.SIGINT)
        if request is not None and self.interrupt_grace > 0:
            def hard_interrupt() -> None:
                if self.active is worker and self.queue.current is request:
                    log.warning("worker ignored SIGINT for %.1fs; replacing it", self.interrupt_grace)
                    self._replace_active(
                        f"the cell did not stop within {self.interrupt_grace:g} s of the interrupt,"
                        " so the worker was replaced")
            self._timers.append((time.monotonic() + self.interrupt_grace, hard_interrupt))

    # --------------------------------------------------------------- workers
    def _ensure_workers(self) -> None:
        """Promote a ready spare if there is no active worker; keep the standby count."""
        if self._stopping:
            return
        if self.active is None:
            ready = next((w for w in self.spares if w.state is WorkerState.READY), None)
            if ready is not None:
                self.spares.remove(ready)
                self._activate(ready)
            elif not self.spares:
                self._start_worker()
        if self.active is not None and len(self.spares) < self.standby_workers:
            if self.launcher.state is ServerState.COLD:
                self.launcher.warm_up()
                if self.launcher.state is ServerState.WARMING:  # in case it never answers
                    self._timers.append((time.monotonic() + WARM_UP_LIMIT + 0.1, self._ensure_workers))
            if self.launcher.waiting_for_server():
                return  # its fork will be ready first; a spawn now would only compete with it
            while len(self.spares) < self.standby_workers:
                self._start_worker()

    def _start_worker(self) -> None:
        self._adopt_worker(WorkerProcess(self.ctx, next(self._numbers), self.private_dir, self.worker_config,
                                         start_method=self.launcher.context()))

    def _adopt_worker(self, worker: WorkerProcess) -> None:
        self.spares.append(worker)
        self._by_link[worker.link] = worker
        self._by_sentinel[worker.sentinel] = worker
        self.poller.register(worker.link, zmq.POLLIN)
        self.poller.register(worker.sentinel, zmq.POLLIN)
        log.debug("started worker %s (pid %s, %s)", worker.number, worker.pid, worker.start_method)

    def _activate(self, worker: WorkerProcess) -> None:
        # Comms open now outlived their worker (or there were none): the new
        # worker adopts them when it registers their targets.  It imports
        # ipywidgets itself if there are widgets to bring back.
        worker.orphans = self.comms.open_ids()
        imports = self.comms.imports_for_new_worker()
        worker.send(wire.encode(wire.ACTIVATE, {
            "execution_count": self.execution_count, "imports": imports, "log_level": self.log_level,
            "memory_soft_limit": self.memory_guard.soft_limit}))
        worker.state = WorkerState.ACTIVATING
        self.active = worker

    def _on_activated(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        if worker is self.active:
            worker.state = WorkerState.ACTIVE
            log.info("worker %s (pid %s) is active", worker.number, worker.pid)
            self._dispatch()

    def _forget(self, worker: WorkerProcess) -> None:
        self._by_link.pop(worker.link, None)
        self._by_sentinel.pop(worker.sentinel, None)
        for key in (worker.link, worker.sentinel):
            try:
                self.poller.unregister(key)
            except KeyError:
                pass
        if worker in self.spares:
            self.spares.remove(worker)
        if self.active is worker:
            self.active = None

    def _on_worker_exit(self, worker: WorkerProcess) -> None:
        # Outputs it sent before dying still belong to the user, and a DONE still
        # on its way says the request it ends was not the one that killed the worker.
        self._drain_link(worker)
        while worker.state is not WorkerState.GONE and worker.link.poll(DEAD_LINK_QUIET_MS, zmq.POLLIN):
            self._drain_link(worker)
        was_active = worker is self.active
        was_starting = worker.state is WorkerState.STARTING
        death = Death(worker.exit_info(), crash_log=read_crash_log(worker.config.crash_log),
                      unread_output=worker.unread_output())
        running = worker.requests_running()
        self._forget(worker)
        worker.close()
        if was_active:
            log.info("active worker %s died: %s", worker.number, death.exit.describe())
            # queue what the frontend sent before it could know: with stop_on_error
            # those executes are aborted, whichever poll event came first
            self._drain(self.sockets.shell, "shell")
            self._recover(death, running)
        else:
            log.warning("spare worker %s died before use: %s", worker.number, death.exit.describe())
            now = time.monotonic()
            if was_starting:
                self._start_failures += 1
            # spares that die once ready (something keeps killing them) must not
            # make us start one after another either
            self._spare_deaths = [t for t in self._spare_deaths if now - t < SPARE_DEATH_WINDOW] + [now]
            if self._start_failures >= MAX_START_FAILURES or len(self._spare_deaths) >= MAX_START_FAILURES:
                if self.active is None and self._start_failures >= MAX_START_FAILURES:
                    self._fail_queued(death)  # nothing can run them: say so rather than wait
                self._timers.append((now + 5.0, self._ensure_workers))
                return
        self._ensure_workers()

    def _restart(self) -> None:
        """A restart the user asked for: fresh worker and namespace, count from 1, comms kept."""
        self.execution_count = 1
        self._replace_active(RESTARTED, restart=True)

    def _replace_active(self, reason: str, restart: bool = False) -> None:
        worker = self.active
        if worker is None:
            return
        self._forget(worker)
        worker.kill()
        death = Death(worker.exit_info(timeout=2.0), reason=reason, restart=restart,
                      unread_output=worker.unread_output())
        running = worker.requests_running()
        worker.close()
        self._recover(death, running)
        self._ensure_workers()

    def _recover(self, death: Death, running: int | None) -> None:
        """Give the request the worker was running its one reply, then abort or keep the queue.

        Of the requests sent to the dead worker, the oldest may have finished
        with their DONE lost (progress.py): those that change nothing are asked
        again of the next worker, the others get an error that says so.  Then
        comes the one that was running, which gets the death's error; the rest
        never began and go to the next worker.  ``running``: how many
        requests the worker began and did not report done (None: unknown)."""
        running = 1 if running is None else running  # unknown: the oldest one sent
        again: list[Incoming] = []
        for _ in range(running - 1):
            finished = self.queue.finish()
            if finished is None:
                break
            if finished.msg_type in REPEATABLE:
                again.append(finished)
            else:
                self._reply_lost(finished, death)
        request = self.queue.finish() if running > 0 else None
        self.queue.requeue_sent()  # never started: run on the next worker
        self.queue.requeue(again)
        if request is None:
            self._last_output(None, death)
            if not death.restart:  # a restart of an idle kernel needs no words
                self.out.stream(None, "stderr", death.report(len(self.comms)))
            return
        self._announce(request)
        if request.msg_type == "execute_request" and not request.started and not request.content.get("silent"):
            # the worker died before its execute_input left: the cell must still show up
            self.out.publish(request, "execute_input", {"code": request.content.get("code", ""),
                                                     "execution_count": self.execution_count})
        self._last_output(request, death)
        if request.msg_type == "execute_request":  # its error output says it all; no second copy
            if last_words := death.last_words():
                self.out.stream(request, "stderr", last_words)
        else:  # a comm message or another request: the stream is the only place to say it
            self.out.stream(request, "stderr", death.report(len(self.comms)))
        error = wire.error_reply(WORKER_DIED, death.evalue, death.traceback(len(self.comms)))
        if request.msg_type == "execute_request":
            content = request.content
            if not content.get("silent") and content.get("store_history", True):
                error["execution_count"] = self.execution_count
                self.execution_count += 1
            else:
                error["execution_count"] = self.execution_count
            self.out.publish(request, "error", {k: error[k] for k in ("ename", "evalue", "traceback")})
        self.out.reply(request, error if request.msg_type.endswith("_request") else None)
        self.out.status("idle", request)
        if request.msg_type == "execute_request" and stops_on_error(request):
            self._abort(self.queue.take_executes())

    def _last_output(self, request: Incoming | None, death: Death) -> None:
        """What the dead worker wrote last and could not forward, shown before the report:
        it often names the crash (an assertion message before abort())."""
        for name in ("stdout", "stderr"):
            text = death.unread_output.get(name)
            if text:
                self.out.stream(request, name, text)

    def _reply_lost(self, request: Incoming, death: Death) -> None:
        """A request the worker finished just before it died, whose reply died with it."""
        self._answer(request, wire.error_reply(
            WORKER_DIED, f"{death.evalue}, right after it finished this {request.msg_type}; its reply was lost"))

    def _fail_queued(self, death: Death) -> None:
        for request in self.queue.take_pending():
            self._announce(request)
            self.out.stream(request, "stderr", "relaykernel: no worker could start: "
                                 f"{death.exit.describe()}\n{death.crash_log}")
            self._answer(request, wire.error_reply("WorkerStartFailed", death.exit.describe()))

    # ------------------------------------------------------ timers, signals
    def _next_timeout(self) -> int | None:
        if not self._timers:
            return None
        return max(0, int((min(t for t, _ in self._timers) - time.monotonic()) * 1000) + 1)

    def _run_timers(self) -> None:
        now = time.monotonic()
        due = [t for t in self._timers if t[0] <= now]
        if due:
            self._timers = [t for t in self._timers if t[0] > now]
            for _, callback in due:
                callback()

    def _remove_abandoned_dirs(self) -> None:
        for path in remove_abandoned(self.private_dir):
            log.info("removed %s, left by a supervisor that was killed", path)

    def _record_signal(self, signum: int, frame: Any) -> None:
        self._pending_signals.append(signum)

    def _handle_signals(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        signals, self._pending_signals = self._pending_signals, []
        for signum in signals:
            if signum == signal.SIGINT:
                log.info("SIGINT: interrupting the running cell")
                self.interrupt()
            elif signum == signal.SIGHUP:
                log.info("SIGHUP: restarting the worker in place")
                self._restart()
            elif signum == signal.SIGTERM:
                log.info("SIGTERM: shutting down")
                self._stopping = True

    def _close(self) -> None:
        workers = ([self.active] if self.active else []) + list(self.spares)
        for worker in workers:
            self._forget(worker)
            if worker.state is WorkerState.STARTING:
                worker.kill()  # still importing IPython: it would not hear the request
            else:
                worker.request_stop()
        deadline = time.monotonic() + 1.0
        for worker in workers:
            worker.stop(grace=max(0.05, deadline - time.monotonic()))
        self.launcher.close()
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()
