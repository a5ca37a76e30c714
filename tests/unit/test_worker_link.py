"""The worker's end of the link (relaykernel/worker/link.py), against a real PAIR peer."""

from __future__ import annotations

import os
import socket

import pytest
import zmq

from relaykernel import transport, wire
from relaykernel.worker.link import Link
from tests.kernel.helpers import wait_for


def test_an_undecodable_message_is_reported_not_just_logged(tmp_path):
    """A message from the supervisor the worker cannot decode is dropped, and the
    worker is told why (main.py writes it to the user's stderr), then serving goes on."""
    ctx = zmq.Context()
    supervisor = ctx.socket(zmq.PAIR)
    supervisor.bind(f"ipc://{tmp_path}/link")
    link = Link(ctx, f"ipc://{tmp_path}/link")
    told: list[str] = []
    link.on_malformed = told.append
    try:
        supervisor.send_multipart([b"\x05\x00\x00\x00garbage"])
        supervisor.send_multipart(wire.encode(wire.SHUTDOWN))
        lm = wait_for(lambda: link._receive_nowait(None), 10, what="the SHUTDOWN after the garbage")
        assert lm.kind == wire.SHUTDOWN
        assert len(told) == 1 and "size table" in told[0], told
    finally:
        link.close()
        supervisor.close(0)
        ctx.term()


def _buffer_sizes(fd: int) -> tuple[int, int]:
    with socket.socket(fileno=os.dup(fd)) as conn:
        return (conn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def test_the_link_connection_gets_large_socket_buffers_on_both_ends(tmp_path):
    """libzmq ignores ZMQ_SNDBUF on ipc: both ends set SO_SNDBUF/SO_RCVBUF on the
    connection's fd themselves, at their first send after it is made (transport.py)."""
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            cap = int(f.read())
    except OSError:
        pytest.skip("no /proc/sys/net/core/wmem_max")
    expected = 2 * min(transport.LINK_SOCKET_BUFFER, cap)  # Linux doubles what it grants
    ctx = zmq.Context()
    supervisor = ctx.socket(zmq.PAIR)
    supervisor_buffers = transport.SocketBuffers(supervisor, bound=True)
    supervisor.bind(f"ipc://{tmp_path}/link")
    link = Link(ctx, f"ipc://{tmp_path}/link")
    try:
        link.send(wire.READY)
        assert supervisor.poll(10_000)
        supervisor.recv_multipart()
        assert wait_for(supervisor_buffers.apply, 10, what="the supervisor's end tuned")
        wait_for(lambda: (link.send(wire.ACTIVATED), link._buffers.apply())[1], 10, what="the worker's end tuned")
        for fd in (supervisor_buffers.fd, link._buffers.fd):
            assert _buffer_sizes(fd) == (expected, expected)
        assert supervisor_buffers.fd != link._buffers.fd
        assert not supervisor_buffers.pending and not link._buffers.pending  # monitors closed
    finally:
        link.close()
        supervisor_buffers.close()
        supervisor.close(0)
        ctx.term()


def test_socket_buffers_leave_an_fd_that_is_not_the_link_alone(tmp_path):
    """The fd a monitor event names may have been closed and reused: it is checked first."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        before = _buffer_sizes(a.fileno())
        assert not transport._set_buffers(a.fileno(), f"ipc://{tmp_path}/link", True, 4 << 20)
        assert not transport._set_buffers(a.fileno(), "tcp://127.0.0.1:5555", True, 4 << 20)
        assert _buffer_sizes(a.fileno()) == before


def test_the_supervisor_end_of_a_worker_link_gets_large_socket_buffers(tmp_path):
    """WorkerProcess (the supervisor's end, bound) tunes its connection at its first
    send once the worker has connected: what a 50 MB request to the worker crosses."""
    from types import SimpleNamespace

    from relaykernel.spawn import WorkerConfig
    from relaykernel.supervisor.worker_process import WorkerProcess

    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            cap = int(f.read())
    except OSError:
        pytest.skip("no /proc/sys/net/core/wmem_max")
    expected = 2 * min(transport.LINK_SOCKET_BUFFER, cap)
    ctx, worker_ctx = zmq.Context(), zmq.Context()
    config = WorkerConfig(key=b"k", signature_scheme="hmac-sha256", session_id="s", connection_file="",
                          crash_log=str(tmp_path / "crash"))
    wp = WorkerProcess.__new__(WorkerProcess)
    wp.process = SimpleNamespace(exitcode=None, pid=0)  # no process: only the link is tested
    wp.pid = 0
    wp._bind(ctx, 1, str(tmp_path), config)
    link = Link(worker_ctx, wp.endpoint)
    try:
        link.send(wire.READY)
        assert wp.link.poll(10_000)
        wire.recv_frames(wp.link)
        wait_for(lambda: wp.send(wire.encode(wire.SHUTDOWN)) and wp.link_buffers.fd is not None, 10,
                 what="the supervisor's end tuned")
        assert _buffer_sizes(wp.link_buffers.fd) == (expected, expected)
        assert link.receive({wire.SHUTDOWN}).kind == wire.SHUTDOWN
    finally:
        link.close()
        worker_ctx.term()
        wp.close()
        ctx.term()
