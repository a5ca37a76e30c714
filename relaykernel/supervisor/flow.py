"""A request's life in the supervisor: queued, sent to the worker, busy, replied, idle.

Owned by the supervisor's main thread.  Every request gets exactly one reply
and one busy/idle pair: from the worker (DONE carries the signed reply), from
the supervisor itself (``answer``: rejects, aborts, its own requests), or from
recovery when the worker died.  The execution count lives here too, because it
outlives workers.

Requests wait in *lanes*, one queue each, and each lane runs its requests one
at a time in arrival order: the main shell's (``queue``), one per subshell
(``lanes``, JEP 91: its requests go to the worker's thread for that subshell),
and the lane *beside the cell* (``beside``): the main shell's comm messages
that come while a cell of the main shell runs, which the worker runs as tasks
of the cell's event loop, so that a cell awaiting a widget's answer gets it.

When a lane's request may start beside another lane's (``overlap_after``):
a request starts at once if every request running in another lane has run for
``overlap_after`` seconds (1 s by default), else when they end or reach that
age.  Short requests -- a widget callback, a cell that plots -- then never
overlap, so two lanes cannot interleave on global state such as pyplot's
current figure (JupyterLab issue 19719: an ``interactive`` plot drawn wrong),
and runs are as repeatable as without subshells; while a long cell runs, a
subshell's request starts after at most ``overlap_after``.  0 overlaps always
(ipykernel 7); a negative value never.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from .. import wire
from .shell_queue import ShellQueue, stops_on_error
from .worker_process import WorkerProcess, WorkerState

if TYPE_CHECKING:
    from .comm_relay import CommRelay
    from .outbox import Outbox
    from .sockets import Incoming

log = logging.getLogger("relaykernel.supervisor")

#: REQUEST meta for a request that came on control (the worker's get_parent('control')).
CONTROL_META: dict[str, Any] = {"channel": "control"}


class RequestFlow:
    """The lanes' queues and everything said about their requests."""

    def __init__(self, out: Outbox, comms: CommRelay, overlap_after: float = 1.0,
                 later: Callable[[float, Callable[[], None]], object] | None = None) -> None:
        self.out = out
        self.comms = comms
        self.queue = ShellQueue()  # the main shell's lane
        #: the subshells' lanes, by subshell id (subshells.py makes and deletes them)
        self.lanes: dict[str, ShellQueue] = {}
        #: deleted subshells whose last request still runs in the worker
        self.retiring: dict[str, ShellQueue] = {}
        #: the main shell's comm messages that came while its cell runs (wire.BESIDE_CELL)
        self.beside = ShellQueue()
        self.execution_count = 1  # the next cell's number; survives worker replacement
        self.overlap_after = overlap_after
        self._later = later
        #: dispatch again then (a lane waits for another's request to reach overlap_after)
        self.redispatch: Callable[[], None] = lambda: None
        self._retry_at = math.inf

    # ------------------------------------------------------------------ lanes
    def lane(self, lane_id: str | None) -> ShellQueue | None:
        """The queue of a lane (None: the main shell's); None if there is no such lane."""
        if lane_id is None:
            return self.queue
        if lane_id == wire.BESIDE_CELL:
            return self.beside
        queue = self.lanes.get(lane_id)  # (a ShellQueue with nothing pending is falsy)
        return queue if queue is not None else self.retiring.get(lane_id)

    def all_lanes(self) -> Iterator[tuple[str | None, ShellQueue]]:
        yield None, self.queue
        yield wire.BESIDE_CELL, self.beside
        yield from self.lanes.items()
        yield from self.retiring.items()

    def add_lane(self, lane_id: str) -> None:
        self.lanes[lane_id] = ShellQueue()

    def remove_lane(self, lane_id: str) -> list[Incoming]:
        """Delete a subshell's lane; returns its requests that did not start (to abort).
        What it sent the worker still finishes (its DONE comes)."""
        queue = self.lanes.pop(lane_id)
        pending = queue.take_pending()
        if queue.current is not None:
            self.retiring[lane_id] = queue
        return pending

    def forget_finished_lanes(self) -> None:
        """Deleted subshells whose last request has ended (by a DONE or a death)."""
        for lane_id, queue in list(self.retiring.items()):
            if queue.current is None:
                self.abort(queue.take_pending())  # sent to a worker that died before it began them
                del self.retiring[lane_id]

    def cell_running(self) -> bool:
        """A cell of the main shell runs now (comm messages then go beside it)."""
        current = self.queue.current
        return current is not None and current.announced and current.msg_type == "execute_request"

    # ----------------------------------------------------------- answered here
    def announce(self, request: Incoming) -> None:
        """Busy for this request, once: one asked again of a new worker was announced already."""
        if not request.announced:
            request.announced = True
            self.out.status("busy", request)

    def answer(self, request: Incoming, content: dict[str, Any]) -> None:
        """Answer a request here, at once, without the worker: busy (once), reply, idle."""
        self.announce(request)
        self.out.reply(request, content)
        self.out.status("idle", request)

    def executing(self, besides: ShellQueue | None = None) -> Incoming | None:
        """The request frontends were told the kernel is busy with (its busy is out,
        its idle not yet): a lane's current one, or one waiting for a new worker
        (the main shell's first).  ``besides``: not one of this lane."""
        for _, queue in self.all_lanes():
            if queue is besides:
                continue
            current = queue.current
            if current is not None and current.announced:
                return current
            waiting = next((r for r in queue if r.announced), None)
            if waiting is not None:
                return waiting
        return None

    def still_busy(self) -> None:
        """After an idle of the supervisor's own: busy again for the request still executing.

        JupyterLab (and every frontend on @jupyterlab/services) shows the last
        status it received as the kernel's, whatever its parent (jupyter_server's
        untracked_message_types make it skip those of kernel_info and comm_info,
        not those of comm messages): without this, a page that reconnects mid-cell
        shows Idle until the cell ends.  Clients that follow their own request's
        busy/idle (jupyter_client, nbclient) ignore an extra busy."""
        request = self.executing()
        if request is not None:
            self.out.status("busy", request)

    def requests_running(self) -> list[tuple[ShellQueue, Incoming]]:
        """Each lane's running request (sent to the worker), with its lane."""
        return [(queue, queue.current) for _, queue in self.all_lanes() if queue.current is not None]

    def abort(self, requests: list[Incoming]) -> None:
        for request in requests:
            self.answer(request, {"status": "aborted"})

    def reject(self, msg: Incoming) -> None:
        """A signed message that cannot be handled: a request gets an error reply, the rest is dropped."""
        log.warning("%s on %s not handled: %s", msg.msg_type, msg.channel, msg.problem)
        if msg.channel not in ("shell", "control") or not msg.msg_type.endswith("_request"):
            return
        error = wire.error_reply("BadMessage", f"relaykernel could not read this {msg.msg_type}: {msg.problem}")
        if msg.msg_type == "execute_request":
            error["execution_count"] = self.execution_count
        self.answer(msg, error)
        self.still_busy()  # a bad message mid-cell must not make the kernel look idle

    # ------------------------------------------------------------ the worker
    def dispatch(self, worker: WorkerProcess | None) -> None:
        """Send what the lanes allow to the worker; the first one a lane sends is now
        running.  A send the worker cannot take killed it: recovery requeues what
        was sent."""
        if worker is None or worker.state is not WorkerState.ACTIVE:
            return
        self._send_lane(worker, None, self.queue)  # the hot path: no lane but the main one
        if not self.lanes and not len(self.beside):
            return
        now = time.monotonic()
        for lane_id, queue in list(self.all_lanes())[1:]:
            if worker.state is not WorkerState.ACTIVE:
                return
            if len(queue) and (queue.current is not None or self._may_start(queue, now)):
                self._send_lane(worker, lane_id, queue)

    def _send_lane(self, worker: WorkerProcess, lane_id: str | None, queue: ShellQueue) -> None:
        while worker.state is WorkerState.ACTIVE:
            if (lane_id is None and queue.current is None and len(queue)
                    and (self.lanes or self.retiring or self.beside.current is not None)
                    and not self._may_start(queue)):
                return
            request = queue.next()
            if request is None:
                return
            if lane_id is None:
                sent = worker.send_request(CONTROL_META if request.channel == "control" else None,
                                           request.frames, request)
            else:  # a subshell's, or beside the cell: the worker's main thread is busy
                sent = worker.send(wire.encode(wire.REQUEST, {"subshell_id": lane_id}, request.frames), side=True)
            if not sent:
                return
            if queue.current is request:
                self.begin(request)

    def _may_start(self, queue: ShellQueue, now: float | None = None) -> bool:
        """Whether the next request of ``queue`` (a lane with nothing running) may start
        now, beside what the other lanes run (the module docstring)."""
        if queue is self.beside:
            return True
        if queue is self.queue and self.beside.current is not None:
            return False  # main-shell messages stay in their order
        due = 0.0
        for _, other in self.all_lanes():
            running = other.current
            if other is queue or other is self.beside or running is None:
                continue
            due = max(due, running.began_at + self.overlap_after if self.overlap_after >= 0 else math.inf)
        now = time.monotonic() if now is None else now
        if due <= now:
            return True
        if due < self._retry_at and due != math.inf and self._later is not None:
            self._retry_at = due
            self._later(due - now, self._retry)
        return False

    def _retry(self) -> None:
        self._retry_at = math.inf
        self.redispatch()

    def begin(self, request: Incoming) -> None:
        """The worker begins this request: busy goes out before any of its outputs
        (published after the request left for the worker, so the worker starts
        ~30 us sooner: its outputs come back through this thread, later)."""
        request.began_at = time.monotonic()
        self.announce(request)
        if request.msg_type == "comm_msg" and request.content.get("comm_id") not in self.comms:
            log.warning("comm_msg for unknown comm_id %r", request.content.get("comm_id"))

    def finished(self, lm: wire.LinkMessage) -> Incoming | None:
        """The worker's DONE for a lane's current request: its reply, idle, and what
        follows (an error with stop_on_error aborts the lane's queued executes; the
        next request sent ahead is running now)."""
        meta = cast(wire.DoneMeta, lm.meta)
        lane_id = meta.get("subshell_id")
        queue = self.lane(lane_id)
        request = queue.finish() if queue is not None else None
        if queue is None or request is None:
            log.warning("worker finished a request the supervisor did not send (lane %r)", lane_id)
            return None
        if lm.payload:
            wire.send_frames(self.out.reply_socket(request), request.idents + list(lm.payload))
        if "execution_count" in meta:
            self.execution_count = int(meta["execution_count"])
        self.out.status("idle", request)
        if (meta.get("status") == "error" and request.msg_type == "execute_request"
                and stops_on_error(request)):
            self.abort(queue.take_executes())
        if queue.current is not None:
            self.begin(queue.current)  # already sent (pipelined); running now
        elif lane_id is not None:
            self.forget_finished_lanes()
            other = self.executing(besides=queue)
            if other is not None:  # a lane's idle must not make the kernel look idle
                self.out.status("busy", other)
        return request
