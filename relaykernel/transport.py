"""Larger kernel socket buffers on the link's connection (both processes import this).

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

Must not import IPython.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from typing import Any

import zmq

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
