"""A request's life in the supervisor: queued, sent to the worker, busy, replied, idle.

Owned by the supervisor's main thread.  Every request gets exactly one reply
and one busy/idle pair: from the worker (DONE carries the signed reply), from
the supervisor itself (``answer``: rejects, aborts, its own requests), or from
recovery when the worker died.  The execution count lives here too, because it
outlives workers.
"""

from __future__ import annotations

import logging
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
    """The shell queue and everything said about its requests."""

    def __init__(self, out: Outbox, comms: CommRelay) -> None:
        self.out = out
        self.comms = comms
        self.queue = ShellQueue()
        self.execution_count = 1  # the next cell's number; survives worker replacement

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

    def executing(self) -> Incoming | None:
        """The request frontends were told the kernel is busy with (its busy is out,
        its idle not yet): the worker's current one, or one waiting for a new worker."""
        current = self.queue.current
        if current is not None and current.announced:
            return current
        return next((r for r in self.queue if r.announced), None)

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
        """Send what the queue allows to the worker; the first one sent is now running.
        A send the worker cannot take killed it: recovery requeues what was sent."""
        while worker is not None and worker.state is WorkerState.ACTIVE:
            request = self.queue.next()
            if request is None:
                return
            meta = CONTROL_META if request.channel == "control" else None
            if not worker.send(wire.encode(wire.REQUEST, meta, request.frames)):
                return
            if self.queue.current is request:
                self.begin(request)

    def begin(self, request: Incoming) -> None:
        """The worker begins this request: busy goes out before any of its outputs
        (published after the request left for the worker, so the worker starts
        ~30 us sooner: its outputs come back through this thread, later)."""
        self.announce(request)
        if request.msg_type == "comm_msg" and request.content.get("comm_id") not in self.comms:
            log.warning("comm_msg for unknown comm_id %r", request.content.get("comm_id"))

    def finished(self, lm: wire.LinkMessage) -> Incoming | None:
        """The worker's DONE for the current request: its reply, idle, and what follows
        (an error with stop_on_error aborts the queued executes; the next request
        sent ahead is running now)."""
        request = self.queue.finish()
        if request is None:
            log.warning("worker finished a request the supervisor did not send")
            return None
        if lm.payload:
            wire.send_frames(self.out.reply_socket(request), request.idents + list(lm.payload))
        meta = cast(wire.DoneMeta, lm.meta)
        if "execution_count" in meta:
            self.execution_count = int(meta["execution_count"])
        self.out.status("idle", request)
        if (meta.get("status") == "error" and request.msg_type == "execute_request"
                and stops_on_error(request)):
            self.abort(self.queue.take_executes())
        if self.queue.current is not None:
            self.begin(self.queue.current)  # already sent (pipelined); running now
        return request
