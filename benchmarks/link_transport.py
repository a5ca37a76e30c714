"""A 50 MB buffer between two bare processes, the way the supervisor and a worker pass it.

    python -m benchmarks.link_transport [-n 7] [--mb 50] [--modes plain,sockbuf,shm]

The parent plays the supervisor (its heap keeps freed memory: relaykernel.heap),
the child the worker (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``).  Each round
trip sends one buffer parent -> child and the child sends the buffer it got
back, as a comm echo does.  Modes, interleaved round by round (each has its own
PAIR socket pair over ipc in a private 0700 directory):

* ``plain``: the link as it is (socket buffers at the system default);
* ``sockbuf``: ZMQ_SNDBUF/ZMQ_RCVBUF of LINK_SOCKBUF on both ends, so a large
  frame crosses the unix socket in fewer writer/reader wake-ups;
* ``shm``: a memfd mapped in both processes (the child opens the parent's
  through /proc); the sender copies the buffer into it and sends a small
  descriptor on the link.  The child copies what it receives out (user code
  never gets a view into memory the parent reuses); the parent keeps what it
  receives as a view into the region (it would publish it from there).

Prints, per mode, the median and range of the round trip and of each leg
(parent -> child: send to the child having the buffer; child -> parent: the
child's send to the parent having it; one clock, CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import mmap
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import zmq

MODES = ("plain", "sockbuf", "shm")
#: the socket buffer size asked for in the sockbuf mode (the system caps it at wmem_max)
LINK_SOCKBUF = 4 << 20
_DESC = struct.Struct("<qq")  # offset, size in the region
_NS = time.perf_counter_ns


def _sockets(ctx: zmq.Context, bind: bool, directory: str) -> dict[str, zmq.Socket]:
    socks = {}
    for mode in MODES:
        s = ctx.socket(zmq.PAIR)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDTIMEO, 30_000)
        monitor = None
        if mode == "sockbuf":  # libzmq 4.3 applies ZMQ_SNDBUF/RCVBUF to tcp only: set them on the fd
            monitor = s.get_monitor_socket(zmq.EVENT_ACCEPTED if bind else zmq.EVENT_CONNECTED)
        endpoint = f"ipc://{directory}/{mode}"
        s.bind(endpoint) if bind else s.connect(endpoint)
        if monitor is not None:
            monitors[mode] = (s, monitor)
        socks[mode] = s
    return socks


monitors: dict[str, tuple[zmq.Socket, zmq.Socket]] = {}


def _tune(timeout_ms: int = 10_000) -> None:
    """Set SO_SNDBUF/SO_RCVBUF on the connection's fd, which the monitor event names."""
    from zmq.utils.monitor import recv_monitor_message

    for mode, (s, monitor) in list(monitors.items()):
        if not monitor.poll(timeout_ms):
            raise SystemExit(f"link_transport: no connection event for {mode}")
        fd = recv_monitor_message(monitor)["value"]
        with socket.socket(fileno=os.dup(fd)) as conn:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                conn.setsockopt(socket.SOL_SOCKET, opt, LINK_SOCKBUF)
        s.disable_monitor()
        monitor.close(0)
        del monitors[mode]


def child(directory: str, region_fd: int, parent: int, size: int) -> None:
    fd = os.open(f"/proc/{parent}/fd/{region_fd}", os.O_RDWR)
    region = mmap.mmap(fd, 2 * size)
    view = memoryview(region)
    up = view[size:]  # the child writes here, the parent reads
    ctx = zmq.Context()
    socks = _sockets(ctx, False, directory)
    _tune()
    poller = zmq.Poller()
    for s in socks.values():
        poller.register(s, zmq.POLLIN)
    while True:
        for s, _ in poller.poll():
            frames = s.recv_multipart(copy=False)
            t_in = _NS()
            if frames[0].bytes == b"stop":
                return
            mode = frames[0].bytes.decode()
            if mode == "shm":
                off, n = _DESC.unpack(frames[1].bytes)
                buf = bytes(view[off:off + n])  # copied out: user code never sees the region
                t_in = _NS()
                t_out = _NS()
                up[:n] = buf
                s.send_multipart([b"shm", _DESC.pack(size, n), struct.pack("<qq", t_in, t_out)])
            else:
                buf = frames[1]
                t_out = _NS()
                s.send_multipart([mode.encode(), buf, struct.pack("<qq", t_in, t_out)], copy=False)
            del frames, buf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=7, help="round trips per mode (after 2 warm-ups)")
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child[0], int(a.child[1]), int(a.child[2]), int(a.child[3]))
        return 0
    from relaykernel import heap

    heap.keep_freed_memory()  # before libzmq's threads, as the supervisor does
    size = int(a.mb * (1 << 20))
    modes = [m for m in a.modes.split(",") if m]
    directory = tempfile.mkdtemp(prefix="relaylink-")
    os.chmod(directory, 0o700)
    region_fd = os.memfd_create("relaykernel-link", os.MFD_CLOEXEC)
    os.ftruncate(region_fd, 2 * size)
    region = mmap.mmap(region_fd, 2 * size)
    view = memoryview(region)
    ctx = zmq.Context()
    socks = _sockets(ctx, True, directory)
    env = dict(os.environ, GLIBC_TUNABLES=heap.hugepage_tunables(os.environ.get("GLIBC_TUNABLES")))
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.link_transport", "--child", directory,
                             str(region_fd), str(os.getpid()), str(size)], env=env, pass_fds=())
    _tune()
    payload = os.urandom(size)
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
    try:
        for i in range(a.n + 2):
            for mode in modes:
                s = socks[mode]
                incoming = zmq.Frame(payload)  # as the frontend's message lands in the supervisor
                t0 = _NS()
                if mode == "shm":
                    view[:size] = incoming.buffer
                    s.send_multipart([b"shm", _DESC.pack(0, size)])
                else:
                    s.send_multipart([mode.encode(), incoming], copy=False)
                if not s.poll(30_000):
                    raise SystemExit(f"link_transport: no answer in mode {mode}")
                frames = s.recv_multipart(copy=False)
                t1 = _NS()
                if mode == "shm":
                    off, n = _DESC.unpack(frames[1].bytes)
                    got = view[off:off + n]  # published from the region, by reference
                else:
                    got = frames[1].buffer
                t_in, t_out = struct.unpack("<qq", frames[2].bytes)
                if i == 0 and bytes(got[:1 << 20]) != payload[:1 << 20]:
                    raise SystemExit(f"link_transport: mode {mode} changed the bytes")
                del got, frames, incoming
                if i >= 2:
                    results[mode].append(((t1 - t0) / 1e6, (t_in - t0) / 1e6, (t1 - t_out) / 1e6))
                time.sleep(0.05)
    finally:
        socks[modes[0]].send(b"stop")
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        ctx.destroy(linger=0)
        view.release()
        region.close()
        os.close(region_fd)
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    print(f"{a.mb:g} MB round trip between two bare processes, n={a.n} per mode, interleaved; "
          f"median (min-max) ms")
    print(f"  {'mode':8} {'round trip':>22} {'parent->child':>22} {'child->parent':>22}")
    for mode, rows in results.items():
        cols = []
        for k in range(3):
            v = [r[k] for r in rows]
            cols.append(f"{statistics.median(v):6.1f} ({min(v):5.1f}-{max(v):5.1f})")
        print(f"  {mode:8} {cols[0]:>22} {cols[1]:>22} {cols[2]:>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
