"""The shell queue: requests run one at a time, in arrival order.

Plain data, owned by the supervisor's main thread.  Knows nothing about
sockets: the supervisor asks it what to run next and which requests a failed
execution aborts.
"""

from __future__ import annotations

import collections
from typing import Iterator

from .sockets import Incoming


class ShellQueue:
    """Arrival-ordered pending requests plus the one in flight at the worker."""

    def __init__(self) -> None:
        self._pending: collections.deque[Incoming] = collections.deque()
        self.current: Incoming | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[Incoming]:
        return iter(self._pending)

    def push(self, request: Incoming) -> None:
        self._pending.append(request)

    def next(self) -> Incoming | None:
        """Pop the next request to run, or None if one is in flight or none wait."""
        if self.current is not None or not self._pending:
            return None
        self.current = self._pending.popleft()
        return self.current

    def finish(self) -> Incoming | None:
        done, self.current = self.current, None
        return done

    def take_executes(self) -> list[Incoming]:
        """Remove and return every queued execute_request (stop_on_error aborts)."""
        executes = [r for r in self._pending if r.msg_type == "execute_request"]
        if executes:
            self._pending = collections.deque(r for r in self._pending if r.msg_type != "execute_request")
        return executes

    def take_all(self) -> list[Incoming]:
        pending = list(self._pending)
        self._pending.clear()
        return pending


def stops_on_error(request: Incoming) -> bool:
    """Whether an error in this execute_request aborts the queued ones (spec default: yes)."""
    content = request.content
    return bool(content.get("stop_on_error", True)) and not content.get("silent", False)
