"""The shell queue: requests run one at a time, in arrival order.

Plain data, owned by the supervisor's main thread.  Knows nothing about
sockets: the supervisor asks it what to send next, which request the worker is
running, and which requests a failed execution aborts.

Requests are *pipelined* to the worker (sent before the previous one is done,
up to ``window``) so the link's round trip is not paid per message; the worker
still runs them strictly one after the other.  Nothing is ever sent behind an
``execute_request`` until it is done, because its error may abort the queued
executes (``stop_on_error``).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

from .sockets import Incoming

#: Most requests sent to the worker and not yet done.
PIPELINE_WINDOW = 64


class ShellQueue:
    """Arrival-ordered pending requests plus those already sent to the worker."""

    def __init__(self, window: int = PIPELINE_WINDOW) -> None:
        self._pending: collections.deque[Incoming] = collections.deque()
        self._sent: collections.deque[Incoming] = collections.deque()
        self._window = window

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[Incoming]:
        return iter(self._pending)

    @property
    def current(self) -> Incoming | None:
        """The request the worker is running now (the oldest one sent)."""
        return self._sent[0] if self._sent else None

    def push(self, request: Incoming) -> None:
        self._pending.append(request)

    def push_next(self, request: Incoming) -> None:
        """A control request: ahead of the shell requests waiting, behind the control
        requests waiting (they run in the order they came)."""
        ahead = 0
        for waiting in self._pending:
            if waiting.channel != "control":
                break
            ahead += 1
        self._pending.insert(ahead, request)

    def next(self) -> Incoming | None:
        """Pop the next request to send to the worker, or None if it must wait."""
        if not self._pending or len(self._sent) >= self._window:
            return None
        if self._sent and (self._sent[-1].msg_type == "execute_request"
                           or self._pending[0].msg_type == "execute_request"):
            return None
        request = self._pending.popleft()
        self._sent.append(request)
        return request

    def finish(self) -> Incoming | None:
        """The worker finished the current request; return it."""
        return self._sent.popleft() if self._sent else None

    def requeue_sent(self) -> None:
        """The worker died: requests it had not started go back to the front."""
        self._pending.extendleft(reversed(self._sent))
        self._sent.clear()

    def requeue(self, requests: list[Incoming]) -> None:
        """Put requests back at the front, in the order given."""
        self._pending.extendleft(reversed(requests))

    def take_executes(self) -> list[Incoming]:
        """Remove and return every queued execute_request (stop_on_error aborts)."""
        executes = [r for r in self._pending if r.msg_type == "execute_request"]
        if executes:
            self._pending = collections.deque(r for r in self._pending if r.msg_type != "execute_request")
        return executes

    def take_pending(self) -> list[Incoming]:
        """Remove and return the requests not sent to a worker yet."""
        pending = list(self._pending)
        self._pending.clear()
        return pending


def stops_on_error(request: Incoming) -> bool:
    """Whether an error in this execute_request aborts the queued ones (spec default: yes)."""
    content = request.content
    return bool(content.get("stop_on_error", True)) and not content.get("silent", False)
