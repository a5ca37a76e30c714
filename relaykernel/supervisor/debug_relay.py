"""debug_request on control: relayed to the worker's debugger, answered when it replies.

Owned by the supervisor's main thread.  A ``debug_request`` makes the kernel
busy and goes to the active worker (once it is ready: a frontend asks as soon
as it connects, while the first worker may still be starting) on its side socket (wire.DEBUG), so it
reaches the worker's debugger (worker/debugger.py) while a cell runs or is
stopped at a breakpoint; the worker's DEBUG_REPLY goes out on control, then
idle.  The worker publishes ``debug_event`` on iopub itself.

What must outlive a worker is kept here: whether a debug session is attached,
with which arguments, the breakpoints the frontend set (the latest
setBreakpoints per source path) and the code of the cells they are in (from
dumpCell).  When the active worker dies or is replaced, every pending request
gets a failed DAP response, and iopub gets the events that end the stopped
state and the session for the frontend (``continued``, ``exited``,
``terminated``).  When the next worker is active, the session is replayed
into it (wire.DEBUG with ``replay``), so the old breakpoints are hit again
with no action from the frontend, which still believes its session attached.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import wire

if TYPE_CHECKING:
    from .flow import RequestFlow
    from .pool import WorkerPool
    from .sockets import Incoming
    from .worker_process import WorkerProcess

log = logging.getLogger("relaykernel.supervisor")

#: seconds the shell requests wait for a replay in a new worker, at most
REPLAY_LIMIT = 15.0


def failed(request: dict[str, Any], message: str) -> dict[str, Any]:
    """A failed DAP response to ``request`` (a debug_request's content)."""
    return {"type": "response", "seq": 0, "request_seq": request.get("seq", 0), "success": False,
            "command": request.get("command", ""), "message": message}


class DebugRelay:
    """Relays debug requests to the active worker and keeps the session across workers."""

    def __init__(self, flow: RequestFlow, pool: WorkerPool, resume: Callable[[], None],
                 later: Callable[[float, Callable[[], None]], Any]) -> None:
        """``resume``: dispatch the requests held during a replay; ``later``: a timer."""
        self.flow = flow
        self._resume = resume
        self._later = later
        #: a new worker re-creates the session: requests wait, so a cell cannot run before
        #: its breakpoints are set (the loop dispatches nothing meanwhile)
        self.replaying = False
        self.out = flow.out
        self.pool = pool
        #: debug_requests sent to the worker, by msg_id, until their reply comes
        self.pending: dict[str, Incoming] = {}
        #: debug_requests that came while no worker was ready: sent when one is
        self.waiting: list[Incoming] = []
        #: the frontend's session: attach's arguments (None: not attached)
        self.attach: dict[str, Any] | None = None
        self.breakpoints: dict[str, list[dict[str, Any]]] = {}
        self.cells: dict[str, str] = {}  # source path -> the code dumpCell wrote there
        self.stopped: list[int] = []  # DAP thread ids stopped, as of the latest reply
        self._last: Incoming | None = None  # events the relay publishes answer it

    def request(self, msg: Incoming) -> None:
        """A debug_request: busy now; the reply and idle come when the worker answers."""
        self.out.status("busy", msg)
        self._last = msg
        worker = self.pool.active_ready()
        if worker is None and self.pool.cannot_start:
            self._answer(msg, failed(msg.content, "no worker could start: the kernel cannot debug"))
        elif worker is None:  # starting (a frontend asks debugInfo as soon as it connects): soon
            self.waiting.append(msg)
        else:
            self._send(worker, msg)

    def _send(self, worker: WorkerProcess, msg: Incoming) -> None:
        self.pending[str(msg.header.get("msg_id", ""))] = msg
        worker.send(wire.encode(wire.DEBUG, None, msg.frames), side=True)  # if it cannot: recovery answers

    def reply(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        """A DEBUG_REPLY from the worker: remember what the session needs, send it, idle."""
        if worker is not self.pool.active:
            return
        if lm.meta.get("replayed"):
            self._replayed()
            return
        msg = self.pending.pop(str(lm.meta.get("msg_id", "")), None)
        if msg is None:
            return
        try:
            content = json.loads(wire.as_bytes(lm.payload[wire.SIGNED.content]))
            self._remember(msg.content, content if isinstance(content, dict) else {})
        except (ValueError, IndexError) as e:
            log.warning("unreadable debug_reply: %s", e)
        stopped = lm.meta.get("stopped")
        if isinstance(stopped, list):
            self.stopped = [t for t in stopped if isinstance(t, int)]
        wire.send_frames(self.out.reply_socket(msg), msg.idents + list(lm.payload))
        self.out.status("idle", msg)
        self.flow.still_busy()

    def _remember(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        command = request.get("command")
        arguments = request.get("arguments") or {}
        if not reply.get("success") or not isinstance(arguments, dict):
            return
        body = reply.get("body") or {}
        if command == "attach":
            self.attach = {k: v for k, v in arguments.items() if k != "connect"}
        elif command == "disconnect":
            self.attach = None
            self.breakpoints.clear()
            self.cells.clear()
            self.stopped = []
        elif command == "dumpCell" and isinstance(body.get("sourcePath"), str):
            self.cells[body["sourcePath"]] = str(arguments.get("code", ""))
        elif command == "setBreakpoints":
            path = (arguments.get("source") or {}).get("path")
            placed = [{"line": bp["line"]} for bp in body.get("breakpoints", []) if "line" in bp]
            if isinstance(path, str) and placed:
                self.breakpoints[path] = placed
            elif isinstance(path, str):
                self.breakpoints.pop(path, None)

    def worker_gone(self) -> None:
        """The active worker died or was replaced (recovery.py): answer what it held, and end
        the frontend's stopped state and session; the next worker gets it back (activated)."""
        for msg in list(self.pending.values()):
            self._answer(msg, failed(msg.content, "the kernel's worker died before it answered"))
        self.pending.clear()
        self.replaying = False
        if self.attach is None:
            return
        for thread_id in self.stopped or [1]:
            self._event("continued", {"threadId": thread_id, "allThreadsContinued": True})
        for thread_id in self.stopped:
            self._event("thread", {"reason": "exited", "threadId": thread_id})
        self.stopped = []
        self._event("exited", {"exitCode": 1})
        self._event("terminated", {})

    def activated(self, worker: WorkerProcess) -> None:
        """A new worker is active: if a session was attached, re-create it there; then
        send it the requests that waited for it."""
        if self.attach is not None:
            session = {"attach": self.attach, "breakpoints": self.breakpoints,
                       "cells": [code for path, code in self.cells.items() if path in self.breakpoints]}
            self.replaying = worker.send(wire.encode(wire.DEBUG, {"replay": session}), side=True)
            self._later(REPLAY_LIMIT, lambda: self._replayed() if self.pool.active is worker else None)
        waiting, self.waiting = self.waiting, []
        for msg in waiting:
            self._send(worker, msg)

    def _replayed(self) -> None:
        if self.replaying:
            self.replaying = False
            self._resume()

    def _answer(self, msg: Incoming, content: dict[str, Any]) -> None:
        self.out.reply(msg, content)
        self.out.status("idle", msg)
        self.flow.still_busy()

    def _event(self, event: str, body: dict[str, Any]) -> None:
        self.out.publish(self._last, "debug_event", {"type": "event", "seq": 0, "event": event, "body": body})
