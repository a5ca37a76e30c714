"""Large frames on the link: larger socket buffers, and shared memory for a request's
large buffers (both processes import this).

A 50 MB comm buffer crosses the link twice per echo.  The link is a zmq PAIR
over ipc, a unix stream socket, whose send buffer is the system default
(``net.core.wmem_default``, ~208 KB here): a large frame then crosses in
~250 rounds of "the sender's IO thread writes until the buffer is full, sleeps,
the receiver's IO thread wakes and reads, the sender wakes again".  With
LINK_SOCKET_BUFFER (the system caps it at ``net.core.wmem_max``; the kernel
doubles what it grants) it takes a few dozen.  Measured between two bare
processes (``python -m benchmarks.link_transport``), a 50 MB round trip
went from ~24-28 ms to ~18-23 ms.

libzmq 4.3 applies ``ZMQ_SNDBUF``/``ZMQ_RCVBUF`` to tcp connections only, so
:class:`SocketBuffers` sets ``SO_SNDBUF``/``SO_RCVBUF`` on the connection's fd
itself: a socket monitor names the fd when the connection is made (accepted on
the supervisor's bound end, connected on the worker's), and :meth:`apply`,
called before sends by the thread that owns the socket, reads that event
without waiting.  The fd is checked to be a unix stream socket on the link's
own path before it is touched.  Buffer memory is only a limit: nothing is
reserved until data is in flight.

Large request buffers reach the worker through shared memory (issue 23):

A frame that crosses the link lands, in the worker, in memory libzmq's IO thread
has just allocated: glibc maps anything that large anew, so every page of it is
fresh.  On a VM whose host takes back the guest's free memory (free page
reporting: pages freed more than ~2 s ago, by any process), faulting fresh memory
in costs from ~3 ms to ~260 ms for 50 MB depending on what the host took back
meanwhile (benchmarks/README.md, issue 23): the 50 MB comm echo then varied from
~1x to ~2.6x ipykernel, run to run.  The supervisor keeps its own heap warm
(heap.keep_freed_memory); the worker cannot, its heap is the user's.

So a REQUEST's buffers of SHARED_MIN bytes or more go through a region of shared
memory instead (:class:`SharedOut`, the supervisor's; one per worker): a memfd the
supervisor copies them into (warm pages, kept until its heap trim), with their
places in the REQUEST's meta (``"shared"``: :class:`SharedSpec`) and an empty
frame in their stead.  The worker (:class:`SharedIn`) maps the region through
``/proc/<supervisor>/fd`` (read only) and copies each buffer out into memory of
its own that it keeps while user code holds no view of it, so user code never
sees memory the supervisor reuses and the next buffer lands in warm pages too.
One request's buffers at a time: the region is busy from the send to that
request's DONE (or the worker's end); meanwhile large buffers take the link as
before.

Must not import IPython.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import zmq

from . import wire

log = logging.getLogger("relaykernel.transport")

#: SO_SNDBUF and SO_RCVBUF asked for on each end of the link (capped by the system)
LINK_SOCKET_BUFFER = 4 << 20
_EVENT = struct.Struct("=hi")  # a monitor event's first frame: event number, value (the fd)


class SocketBuffers:
    """Sets the socket buffers of one zmq socket's first ipc connection.

    Create it before ``bind``/``connect`` (the monitor must exist when the
    connection is made); call :meth:`apply` from the socket's owning thread
    (it is cheap once done) and :meth:`close` with the socket."""

    def __init__(self, sock: zmq.Socket, bound: bool, size: int = LINK_SOCKET_BUFFER) -> None:
        self.size = size
        self._bound = bound
        self._sock: zmq.Socket | None = sock
        self._monitor: zmq.Socket | None = None
        #: the fd whose buffers were set (None until then)
        self.fd: int | None = None
        try:
            self._monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED if bound else zmq.EVENT_CONNECTED)
        except zmq.ZMQError as e:  # no monitor support: the default buffers stay
            log.debug("no socket monitor for the link's buffers: %s", e)
            self._sock = None

    @property
    def pending(self) -> bool:
        return self._monitor is not None

    def apply(self) -> bool:
        """If the connection was made, set its buffers and stop watching; never blocks.
        Returns whether the buffers are set (now or before)."""
        monitor = self._monitor
        if monitor is None:
            return self.fd is not None
        try:
            frames = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError:
            self.close()
            return False
        endpoint = frames[1].decode(errors="replace") if len(frames) > 1 else ""
        try:
            _event, fd = _EVENT.unpack(frames[0][: _EVENT.size])
        except struct.error:
            return False
        if _set_buffers(fd, endpoint, self._bound, self.size):
            self.fd = fd
        self.close()
        return self.fd is not None

    def close(self) -> None:
        """Stop watching (the socket itself is the caller's)."""
        monitor, self._monitor = self._monitor, None
        sock, self._sock = self._sock, None
        if monitor is None:
            return
        if sock is not None and not sock.closed:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        monitor.close(linger=0)


def _set_buffers(fd: int, endpoint: str, bound: bool, size: int) -> bool:
    """Set SO_SNDBUF/SO_RCVBUF on ``fd`` if it is the unix stream connection to ``endpoint``."""
    if not endpoint.startswith("ipc://"):
        return False
    path = endpoint[len("ipc://") :]
    try:
        conn = socket.socket(fileno=os.dup(fd))  # the same socket; closing the dup leaves zmq's fd open
    except OSError:
        return False
    with conn:
        try:
            if conn.family != socket.AF_UNIX or conn.type != socket.SOCK_STREAM:
                return False
            name: Any = conn.getsockname() if bound else conn.getpeername()
            if name != path:
                return False  # not the link's (the fd was closed and reused): leave it alone
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError as e:
            log.debug("cannot set the link's socket buffers: %s", e)
            return False
    return True


# ------------------------------------------------------ large frames, shared memory

#: A request's buffers at least this large go through the shared region.
SHARED_MIN = 1 << 20
#: Region places and worker buffers are rounded up to this (one huge page).
_ALIGN = 2 << 20
#: Seconds without a large buffer after which the worker lets go of its buffers.
WARM_SECONDS = 3.0
#: Buffers the worker keeps at most (a view may hold one for a while: see SharedIn._buffer).
WARM_BUFFERS = 4


def _round_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _frame_view(frame: Any) -> memoryview:
    """A frame's bytes as a flat memoryview (bytes, memoryview or zmq.Frame)."""
    view = memoryview(frame.buffer if isinstance(frame, zmq.Frame) else frame)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


class SharedOut:
    """The supervisor's region for one worker (see above).  Main thread only."""

    def __init__(self) -> None:
        _regions.add(self)
        self._fd = -1
        self._map: Any = None
        self._size = 0
        #: the request whose buffers are in the region (None: free)
        self.busy: Any = None
        self.enabled = hasattr(os, "memfd_create")

    def place(self, frames: list[Any], first: int, owner: Any) -> wire.SharedSpec | None:
        """Copy the buffers of ``frames[first:]`` that are SHARED_MIN or larger into the
        region, replacing each with ``b""`` in ``frames``; returns the spec for the
        REQUEST's meta, or None (nothing large, the region busy or unavailable)."""
        if self.busy is not None or not self.enabled:
            return None
        big = [i for i in range(first, len(frames)) if _frame_bytes(frames[i]) >= SHARED_MIN]
        if not big:
            return None
        need = sum(_round_up(_frame_bytes(frames[i])) for i in big)
        try:
            self._reserve(need)
        except (OSError, ValueError) as e:
            log.warning("no shared region for large buffers (%s): they take the link", e)
            self.close()
            self.enabled = False
            return None
        places: list[list[int]] = []
        offset = 0
        for i in big:
            view = _frame_view(frames[i])
            n = view.nbytes
            self._map[offset:offset + n] = view
            places.append([i, offset, n])
            frames[i] = b""
            offset += _round_up(n)
        self.busy = owner
        return wire.SharedSpec(pid=os.getpid(), fd=self._fd, size=self._size, frames=places)

    def release(self, owner: Any) -> None:
        """``owner``'s request is done: the region is free again."""
        if self.busy is owner:
            self.busy = None

    def trim(self) -> None:
        """Give the region's pages back (the supervisor's heap trim), unless it is in use."""
        if self._map is not None and self.busy is None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                self._map.madvise(mmap.MADV_REMOVE)

    def _reserve(self, need: int) -> None:
        if need <= self._size:
            return
        if self._fd < 0:
            self._fd = os.memfd_create("relaykernel-link", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, need)  # grows the same file: the worker maps it again
        if self._map is not None:
            self._map.close()
            self._map = None
        self._map = mmap.mmap(self._fd, need)
        self._size = need

    def close(self) -> None:
        """The worker is gone: the region goes (a worker's mapping keeps its pages till it unmaps)."""
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._size = 0
        self.busy = None


#: the supervisor's regions, for trim_regions
_regions: weakref.WeakSet[SharedOut] = weakref.WeakSet()


def trim_regions() -> None:
    """Give the pages of every free region back (heap.release_freed_memory calls this)."""
    for region in list(_regions):
        region.trim()


def _frame_bytes(frame: Any) -> int:
    return _frame_view(frame).nbytes


class SharedIn:
    """The worker's end: maps the supervisor's region, copies buffers out into memory
    it keeps warm (see above).  ``resolve`` on the main thread; ``tick`` from the
    link's ticker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._region: Any = None
        self._key: tuple[int, int] = (0, 0)  # the region's (supervisor pid, fd)
        self._region_size = 0
        #: buffers of ours, free unless user code holds a view of one
        self._warm: list[mmap.mmap] = []
        self._last = 0.0
        #: buffers received into memory of ours kept warm, and into new memory (diagnostics, tests)
        self.reused = self.fresh = 0

    def resolve(self, meta: Mapping[str, Any], payload: Sequence[Any]) -> list[Any]:
        """The payload with the region's buffers in place (memoryviews of our buffers).
        Raises OSError if the region cannot be mapped."""
        spec = meta["shared"]
        frames = list(payload)
        with self._lock:
            region = self._map(int(spec["pid"]), int(spec["fd"]), int(spec["size"]))
            taken: list[mmap.mmap] = []
            for index, offset, n in spec["frames"]:
                buf = self._buffer(n, taken)
                buf[:n] = region[offset:offset + n]
                frames[index] = memoryview(buf)[:n]
            self._last = time.monotonic()
        return frames

    def _map(self, pid: int, fd: int, size: int) -> memoryview:
        if self._region is None or self._key != (pid, fd) or self._region_size < size:
            self._unmap()
            src = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                region = mmap.mmap(src, size, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(src)
            self._region, self._key, self._region_size = region, (pid, fd), size
        return memoryview(self._region)

    def _buffer(self, n: int, taken: list[mmap.mmap]) -> mmap.mmap:
        """A buffer of ours of at least ``n`` bytes that no view holds (the smallest).

        A buffer a view still holds stays in the pool: the request before this one
        usually does (the kernel keeps its message, the parent of what it outputs,
        until the next one begins), so two buffers alternate.  Past WARM_BUFFERS the
        oldest is let go (closed if free; if not, it is user code's now)."""
        free = [b for b in self._warm if len(b) >= n and b not in taken and _free(b)]
        if free:
            buf = min(free, key=len)
            self.reused += 1
        else:
            self.fresh += 1
            buf = mmap.mmap(-1, _round_up(n), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            with contextlib.suppress(AttributeError, OSError):
                buf.madvise(mmap.MADV_HUGEPAGE)
            self._warm.append(buf)
            while len(self._warm) > WARM_BUFFERS:
                old = next((b for b in self._warm if b not in taken), None)
                if old is None:
                    break
                self._warm.remove(old)
                with contextlib.suppress(BufferError):
                    old.close()
        taken.append(buf)
        return buf

    def tick(self) -> None:
        """Let go of the buffers and the region once no large buffer came for WARM_SECONDS."""
        if not (self._warm or self._region is not None) or time.monotonic() - self._last < WARM_SECONDS:
            return
        with self._lock:
            if time.monotonic() - self._last >= WARM_SECONDS:
                self.drop()

    def drop(self) -> None:
        """Let go of our free buffers and the region now.  Buffers user code holds
        stay theirs.  Also in a snapshot's child right after the fork (no lock: the
        ticker thread that may have held it is not there), so that the worker's
        buffers stay the worker's alone, as the child's malloc_trim does for the heap."""
        for buf in self._warm:
            with contextlib.suppress(BufferError):
                buf.close()
        self._warm = []
        self._unmap()

    def _unmap(self) -> None:
        if self._region is not None:
            with contextlib.suppress(BufferError):
                self._region.close()
        self._region, self._key, self._region_size = None, (0, 0), 0


def _free(buf: mmap.mmap) -> bool:
    """No view of ``buf`` is held (an mmap with exports cannot be resized)."""
    try:
        buf.resize(len(buf))
    except (BufferError, OSError, ValueError, SystemError):
        return False
    return True
