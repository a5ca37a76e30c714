"""The worker's end of the side socket: what must arrive while the main thread is busy.

The link (link.py) is read by the main thread only, between requests: a cell
that runs, waits in ``input()`` or is stopped at a breakpoint reads nothing
from it.  The supervisor sends on the side socket (wire.SIDE_SUFFIX) what must
not wait for that -- requests of subshells and their input replies
(subshells.py), interrupts of subshells -- and this module's thread hands each
message to the handler of its kind, at once.  It only receives: replies and
outputs go back on the link, behind the outputs they follow.

Must not import IPython.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq

from .. import wire

log = logging.getLogger("relaykernel.worker")

#: sockets of a worker this process was forked from (a snapshot's child): never closed
_abandoned: list[Any] = []


class SideChannel:
    """A thread that reads the side socket and calls ``handlers[kind](message)``.

    Handlers run on this thread: they must hand work over (to a subshell's
    queue, to the main loop) rather than run user code here."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.handlers: dict[bytes, Callable[[wire.LinkMessage], None]] = {}
        self._open(ctx, endpoint)

    def _open(self, ctx: zmq.Context, endpoint: str) -> None:
        self._socket = ctx.socket(zmq.PAIR)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint + wire.SIDE_SUFFIX)
        self._thread = threading.Thread(target=self._serve, args=(self._socket,), name="relaykernel-side",
                                        daemon=True)

    def start(self) -> None:
        """Start reading (call with the main thread's signals blocked: the thread inherits that)."""
        self._thread.start()

    def reopen(self, ctx: zmq.Context, endpoint: str) -> None:
        """In a snapshot's child woken to become a worker: a new socket and thread (the
        old ones are the dead worker's, and the thread did not survive the fork)."""
        _abandoned.append(self._socket)
        self._open(ctx, endpoint)
        self.start()

    def _serve(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart(copy=False)
            except zmq.ContextTerminated:  # the worker is exiting (Link.flush_and_stop)
                sock.close(linger=0)
                return
            except zmq.ZMQError as e:
                log.warning("side socket closed: %s", e)
                return
            try:
                lm = wire.decode(frames)
            except wire.WireError as e:
                log.warning("dropped a malformed side message: %s", e)
                continue
            handler = self.handlers.get(lm.kind)
            if handler is None:
                log.warning("no handler for side message %r", lm.kind)
                continue
            try:
                handler(lm)
            except Exception:
                log.exception("error handling side message %r", lm.kind)
