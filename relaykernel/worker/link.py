"""The worker's end of the link, pumped by one IO thread.

Threads: the IO thread ("relaykernel-link") owns the PAIR socket to the
supervisor and the inproc PULL "outbox".  Every other thread (the main thread
running cells, stream flushers, the fd-capture reader, user threads) sends by
pushing onto one shared PUSH socket under a lock, so everything leaves in the
order it was sent, whichever thread sent it.  Incoming requests land in
``requests`` (read by the main thread), input replies in ``input_replies``.
The IO thread also runs periodic ``tickers`` (stream flushes) between polls.

Must not import IPython.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from .. import wire

#: How often the IO thread runs its tickers when nothing arrives (seconds).
TICK_INTERVAL = 0.05


class Link:
    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self._ctx = ctx
        self._pair = ctx.socket(zmq.PAIR)
        self._pair.setsockopt(zmq.LINGER, 2000)
        self._pair.connect(endpoint)
        address = f"inproc://relaykernel-outbox-{os.getpid()}-{id(self)}"
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 0)
        self._pull.bind(address)
        self._push = ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, 0)
        self._push.setsockopt(zmq.LINGER, 2000)
        self._push.connect(address)
        self._push_lock = threading.Lock()
        self.requests: queue.SimpleQueue[wire.LinkMessage] = queue.SimpleQueue()
        self.input_replies: queue.SimpleQueue[wire.LinkMessage] = queue.SimpleQueue()
        self.tickers: list[Callable[[], None]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="relaykernel-link", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, kind: bytes, meta: dict[str, Any] | None = None, payload: Sequence[Any] = ()) -> None:
        """Queue a link message for the supervisor; safe from any thread."""
        frames = wire.encode(kind, meta, payload)
        with self._push_lock:
            wire.send_frames(self._push, frames)

    def _pump(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pair, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        timeout = int(TICK_INTERVAL * 1000)
        pair, pull = self._pair, self._pull
        while not self._stopped.is_set():
            try:
                events = dict(poller.poll(timeout))
            except zmq.ZMQError:
                break
            if pull in events:
                for _ in range(1000):
                    try:
                        wire.send_frames(pair, wire.recv_frames(pull))
                    except zmq.Again:
                        break
            if pair in events:
                for _ in range(1000):
                    try:
                        frames = wire.recv_frames(pair)
                    except zmq.Again:
                        break
                    self._deliver(frames)
            for tick in self.tickers:
                tick()

    def _deliver(self, frames: list[Any]) -> None:
        try:
            lm = wire.decode(frames)
        except wire.WireError:
            return
        if lm.kind == wire.INPUT_REPLY:
            self.input_replies.put(lm)
        else:
            self.requests.put(lm)

    def flush_and_stop(self, timeout: float = 2.0) -> None:
        """Forward what is queued, then stop the IO thread (the worker is exiting)."""
        self._stopped.set()
        self._thread.join(timeout)
        try:
            while True:
                wire.send_frames(self._pair, self._pull.recv_multipart(zmq.NOBLOCK, copy=False))
        except zmq.ZMQError:
            pass
