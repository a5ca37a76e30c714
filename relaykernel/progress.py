"""How many requests a worker has begun, in a file that outlives the worker.

The supervisor pipelines requests to the worker (shell_queue.py), so when a
worker dies with several requests sent, the supervisor must tell which one
killed it: that one gets the crash's error, the ones after it never started
and go to the next worker.  The link cannot tell: a zmq send only queues the
message for the IO thread, so the DONE of the request before the fatal one is
often still queued when ``os._exit`` or a segfault ends the process, and is
lost with it.  Without this count the supervisor would blame the request that
finished and run the fatal one again on the next worker.

The worker stores the count in a shared mapping of an 8-byte file in the
supervisor's private directory before it begins each request: a store to
memory, done before the request's code runs, so it survives any death.  The
supervisor reads the file after the worker is gone.
"""

from __future__ import annotations

import mmap
import os
import struct

_COUNT = struct.Struct("=Q")


def create(path: str) -> None:
    """Supervisor: a zero count for a worker about to start (the file is private: 0600)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, _COUNT.pack(0))
    finally:
        os.close(fd)


def read(path: str) -> int | None:
    """Supervisor: the count the worker left, or None if the file is unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(_COUNT.size)
    except OSError:
        return None
    return _COUNT.unpack(data)[0] if len(data) == _COUNT.size else None


class Counter:
    """Worker: counts the requests it begins, in the supervisor's file."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, _COUNT.size)
        finally:
            os.close(fd)
        self.count = 0

    def begin_request(self) -> None:
        self.count += 1
        _COUNT.pack_into(self._map, 0, self.count)
