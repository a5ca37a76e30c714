"""Heartbeat echo, in its own thread so it answers while everything else is busy.

The thread owns the hb socket and nothing else; it only ever echoes.  It
echoes whole multipart messages: a REP socket that has read only the first
part of one refuses to send, and that would stop the heartbeat for good.
"""

from __future__ import annotations

import threading

import zmq

from ..lazylog import LazyLogger
from .sockets import SocketOptions, bind

log = LazyLogger("relaykernel.supervisor")


class Heartbeat(threading.Thread):
    """Echo every ping on a REP socket until the context is terminated or stop()."""

    def __init__(self, ctx: zmq.Context, transport: str, ip: str, port: int,
                 options: SocketOptions | None = None) -> None:
        super().__init__(name="relaykernel-heartbeat", daemon=True)
        self._socket = ctx.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        (options or SocketOptions()).apply(self._socket)  # encrypted like the others
        self.port = bind(self._socket, transport, ip, port)
        self._stop_flag = threading.Event()

    def run(self) -> None:
        sock = self._socket
        while not self._stop_flag.is_set():
            try:
                if sock.poll(500):
                    sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
            except zmq.ContextTerminated:
                break
            except zmq.ZMQError as e:  # keep beating whatever one ping did
                if e.errno == zmq.ENOTSOCK:
                    break
                log.warning("heartbeat: %s", e)
        sock.close(linger=0)

    def stop(self) -> None:
        self._stop_flag.set()
