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

The worker also leaves a record for the provisioner, which must outlive the
supervisor itself: its process group (see :func:`record_group`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct

_COUNT = struct.Struct("=Q")

#: Set by the provisioner (provisioner.py) in the kernel's environment, which the
#: workers and the programs their cells start inherit: a 0700 directory of its own
#: where each worker leaves an empty file named after its process group.  Both the
#: files and the environment outlive a SIGKILLed supervisor, so a forced shutdown
#: still finds the groups, and tells ours from a reused id by this variable.
GROUPS_ENV = "RELAYKERNEL_GROUPS_DIR"


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


def record_group() -> None:
    """Worker, once it leads its own process group: name the group in the provisioner's
    directory (if the kernel was started by it), and remove the files of groups that
    have ended, so the directory holds about one file per live worker."""
    directory = os.environ.get(GROUPS_ENV)
    if not directory:
        return
    try:
        os.close(os.open(os.path.join(directory, str(os.getpgrp())), os.O_WRONLY | os.O_CREAT, 0o600))
        ended = [name for name in os.listdir(directory) if name.isdigit() and not group_alive(int(name))]
    except OSError:
        return  # the provisioner is gone, and its directory with it
    for name in ended:
        with contextlib.suppress(OSError):  # another worker may prune it too
            os.unlink(os.path.join(directory, name))


def group_alive(pgid: int) -> bool:
    """Whether a process group still holds a process we may signal."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's: the id was reused, our group ended
    return True


class Counter:
    """Worker: counts the requests it begins, in the supervisor's file.  Made once
    the worker leads its group and before it runs any request, so it also records
    that group for the provisioner (:func:`record_group`)."""

    def __init__(self, path: str) -> None:
        record_group()
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, _COUNT.size)
        finally:
            os.close(fd)
        self.count = 0

    def begin_request(self) -> None:
        self.count += 1
        _COUNT.pack_into(self._map, 0, self.count)
