"""Transport hardening (issue 21, items 5-7): CurveZMQ encryption, what one
client can cost the supervisor, and who gets a client's replies.

Every socket here has a bounded wait; every kernel is stopped by pid.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import zmq
from jupyter_client.connect import write_connection_file
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session
from zmq.utils.monitor import recv_monitor_message

from tests.conftest import kernel_argv
from tests.kernel.helpers import (
    KERNEL_NAME,
    Deadline,
    KernelHandle,
    _kernel_pid,
    collect_iopub_until_idle,
    execute_ok,
    get_reply,
    kernel_env,
    relaykernel_only,
    start_kernel,
    stop_kernel,
    stream_text,
)

#: How long a socket that should get nothing is listened to.
SILENCE = 2.0
MB = 1 << 20


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A context of the test's own, for raw sockets; its sockets close with it."""
    context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


@pytest.fixture
def encrypted() -> Iterator[KernelHandle]:
    handle = start_kernel(KERNEL_NAME, transport_encryption="required")
    try:
        yield handle
    finally:
        stop_kernel(handle)


def _url(info: dict, channel: str) -> str:
    return f"tcp://{info['ip']}:{info[channel + '_port']}"


def _curve_client(sock: zmq.Socket, info: dict) -> None:
    """Configure ``sock`` as jupyter_client does: the connection file's key pair, the kernel's public key."""
    sock.curve_secretkey = info["curve_secretkey"].encode()
    sock.curve_publickey = info["curve_publickey"].encode()
    sock.curve_serverkey = info["curve_publickey"].encode()


def _ping(ctx: zmq.Context, info: dict, curve: bool) -> bool:
    """Whether the heartbeat echoes one ping within SILENCE seconds."""
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    if curve:
        _curve_client(sock, info)
    sock.connect(_url(info, "hb"))
    sock.send(b"ping")
    echoed = sock.poll(SILENCE * 1000) and sock.recv() == b"ping"
    sock.close(0)
    return bool(echoed)


# ------------------------------------------------------------ (5) CurveZMQ
def test_required_encryption_runs_code_and_refuses_plain_text(encrypted, ctx):
    km, kc = encrypted.km, encrypted.kc
    with open(km.connection_file) as f:
        info = json.load(f)
    assert info["curve_publickey"] and info["curve_secretkey"]
    _, iopub = execute_ok(kc, "print(6 * 7)")
    assert stream_text(iopub) == "42\n"
    assert _ping(ctx, info, curve=True), "no encrypted heartbeat"

    # a plaintext client gets nothing, even one that signs with the right key
    assert not _ping(ctx, info, curve=False), "the heartbeat answered in plain text"
    shell = ctx.socket(zmq.DEALER)
    shell.linger = 0
    shell.connect(_url(info, "shell"))
    Session(key=km.session.key, signature_scheme=km.session.signature_scheme).send(
        shell, "kernel_info_request", {})
    iopub_sub = ctx.socket(zmq.SUB)
    iopub_sub.linger = 0
    iopub_sub.setsockopt(zmq.SUBSCRIBE, b"")
    iopub_sub.connect(_url(info, "iopub"))
    execute_ok(kc, "print('secret')")  # published while the plaintext subscriber listens
    assert not shell.poll(SILENCE * 1000), "shell answered a plaintext client"
    assert not iopub_sub.poll(100), "iopub published in plain text"
    _, iopub = execute_ok(kc, "print('still here')")
    assert stream_text(iopub) == "still here\n"


def _connection_file(tmp_path: Path, **curve: str) -> str:
    path = str(tmp_path / "kernel.json")
    write_connection_file(path, ip="127.0.0.1", key=b"k", transport="tcp")
    with open(path) as f:
        info = json.load(f)
    info.update(curve)
    with open(path, "w") as f:
        json.dump(info, f)
    return path


def _run_kernel(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a kernel that is expected to stop by itself (bounded; run kills it on timeout)."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=kernel_env())


@relaykernel_only  # ipykernel hands the keys to libzmq: whether it starts depends on libzmq
def test_keys_that_cannot_be_used_stop_the_kernel(tmp_path):
    public, secret = (k.decode() for k in zmq.curve_keypair())
    bad = _connection_file(tmp_path, curve_publickey=public, curve_secretkey="not a key")
    result = _run_kernel([sys.executable, "-m", "relaykernel", "-f", bad])
    assert result.returncode != 0
    assert "curve_secretkey" in result.stderr, result.stderr

    # pyzmq without CURVE support: a clear error, never plain text
    good = _connection_file(tmp_path, curve_publickey=public, curve_secretkey=secret)
    no_curve = ("import sys, zmq\n"
                "has = zmq.has\n"
                "zmq.has = lambda feature: feature != 'curve' and has(feature)\n"
                "from relaykernel.__main__ import main\n"
                "main(sys.argv[1:])\n")
    result = _run_kernel([sys.executable, "-c", no_curve, "-f", good])
    assert result.returncode != 0
    assert "has('curve') is False" in result.stderr, result.stderr


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants, by pid."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _stderr_until(proc: subprocess.Popen[str], text: str, timeout: float) -> str:
    """Read the process's stderr until ``text`` shows (or the deadline, or EOF)."""
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if text in line:
                done.set()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout)
    return "".join(seen)


@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
def test_tcp_without_encryption_is_warned_about(tmp_path, curve):
    public, secret = (k.decode() for k in zmq.curve_keypair())
    keys = {"curve_publickey": public, "curve_secretkey": secret} if curve else {}
    path = _connection_file(tmp_path, **keys)
    argv = [a.replace("{connection_file}", path) for a in kernel_argv()]
    warning = "Kernel is running over TCP without encryption"
    proc = subprocess.Popen([*argv, "--log-level=INFO"], stderr=subprocess.PIPE, text=True,
                            env=kernel_env(), start_new_session=True)
    try:
        # both log that they use encryption, at INFO, where a plaintext kernel warns
        stderr = _stderr_until(proc, "CurveZMQ", timeout=60)
    finally:
        _kill_tree(proc.pid)
        proc.wait(timeout=10)
    assert "CurveZMQ" in stderr, stderr
    assert (warning in stderr) is not curve, stderr


# ------------------------------------------------------ (6) bounded memory
class PeakRss:
    """The highest RSS a process reaches while this samples it (every 10 ms, in a thread)."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> int:
        """Stop sampling; the growth over the first sample, in bytes."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return self.peak - self.start


def _stalled_subscriber(ctx: zmq.Context, info: dict) -> zmq.Socket:
    """An iopub subscriber that never reads, and whose process buffers next to nothing
    (a frozen frontend): what the kernel sends it stays queued in the kernel."""
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(_url(info, "iopub"))
    # subscribed once the kernel's welcome is waiting (polling reads nothing)
    assert sock.poll(10_000), "no iopub_welcome for the stalled subscriber"
    return sock


@relaykernel_only  # ipykernel's print batches have no size limit: 1,000 of them are unbounded
@pytest.mark.timeout(240)
def test_a_stalled_subscriber_costs_the_supervisor_a_bounded_amount(ctx):
    """1M lines of 150 characters (~150 MB) while a subscriber never reads: with
    --Supervisor.iopub_queue_limit=500 the supervisor queues at most 500 messages of
    at most 64 KiB for it, ~32 MB, and a client that reads gets every line.  The limit
    is per subscriber: the reading client, when the host is loaded and it lags, may
    hold as many, so the bound (90 MB) is two full queues and some; unbounded, the
    stalled subscriber alone would hold the whole ~150 MB."""
    kernel = _start_with(["--Supervisor.iopub_queue_limit=500"])
    try:
        _stalled_subscriber_run(kernel, ctx)
    finally:
        stop_kernel(kernel)


def _start_with(extra: list[str]) -> KernelHandle:
    km = KernelManager(kernel_name=KERNEL_NAME)
    km.shutdown_wait_time = 5.0
    km.start_kernel(env=kernel_env(), extra_arguments=extra)
    handle = KernelHandle(km=km, kc=km.client(), pid=_kernel_pid(km))
    handle.kc.start_channels()
    handle.kc.wait_for_ready(timeout=60)
    return handle


def _stalled_subscriber_run(kernel: KernelHandle, ctx: zmq.Context) -> None:
    kc = kernel.kc
    info = kernel.km.get_connection_info()
    execute_ok(kc, "pad = 'x' * 142")
    stalled = _stalled_subscriber(ctx, info)
    rss = PeakRss(kernel.pid)
    n = 1_000_000
    msg_id = kc.execute(f"for i in range({n}):\n    print(f'{{i:7d}}', pad)")
    iopub = collect_iopub_until_idle(kc, msg_id, timeout=180)  # read as it comes
    growth = rss.stop()
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    lines = stream_text(iopub).splitlines()
    assert len(lines) == n and all(int(line[:7]) == i for i, line in enumerate(lines))
    print(f"supervisor RSS {rss.start / MB:.0f} MB, +{growth / MB:.0f} MB at most")
    assert growth < 90 * MB, f"the supervisor grew by {growth / MB:.0f} MB"
    stalled.close(0)


def _until_disconnected(monitor: zmq.Socket, timeout: float) -> bool:
    deadline = Deadline(timeout)
    while monitor.poll(deadline.remaining() * 1000):
        if recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
            return True
    return False


@relaykernel_only  # ipykernel has no inbound size limit
@pytest.mark.parametrize("channel", ["shell", "control", "stdin"])
def test_an_oversized_frame_is_refused_before_it_is_buffered(kernel, ctx, channel):
    """An unsigned 200 MB frame closes its connection (Supervisor.max_message_size,
    128 MiB) before the supervisor buffers it; the kernel carries on."""
    info = kernel.km.get_connection_info()
    sender = ctx.socket(zmq.DEALER)
    sender.linger = 0
    monitor = sender.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sender.connect(_url(info, channel))
    rss = PeakRss(kernel.pid)
    sender.send_multipart([b"<IDS|MSG>", b"", b"{}", b"{}", b"{}", b"\0" * (200 * MB)], copy=False)
    refused = _until_disconnected(monitor, timeout=20)
    growth = rss.stop()
    assert refused, "the kernel did not close the connection that sent 200 MB"
    assert growth < 50 * MB, f"the supervisor grew by {growth / MB:.0f} MB"
    _, iopub = execute_ok(kernel.kc, "print('fine')")
    assert stream_text(iopub) == "fine\n"


@relaykernel_only
def test_the_limits_are_set_on_the_kernels_command_line(ctx):
    """Both limits bind with the sockets, before config files are read: the kernelspec's
    argv sets them (here 50 messages, ~3 MB of print output, and 1 MB frames)."""
    handle = _start_with(["--Supervisor.iopub_queue_limit=50", "--Supervisor.max_message_size=1000000"])
    try:
        info = handle.km.get_connection_info()
        sender = ctx.socket(zmq.DEALER)
        sender.linger = 0
        monitor = sender.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sender.connect(_url(info, "shell"))
        sender.send_multipart([b"<IDS|MSG>", b"", b"{}", b"{}", b"{}", b"\0" * (2 * MB)])
        assert _until_disconnected(monitor, timeout=20), "a 2 MB frame was taken"

        execute_ok(handle.kc, "pad = 'x' * 142")
        stalled = _stalled_subscriber(ctx, info)
        rss = PeakRss(handle.pid)
        _, iopub = execute_ok(handle.kc, "for i in range(200_000):\n    print(i, pad)", timeout=120)
        growth = rss.stop()
        assert len(stream_text(iopub).splitlines()) == 200_000
        assert growth < 12 * MB, f"the supervisor grew by {growth / MB:.0f} MB for ~30 MB of output"
        stalled.close(0)
    finally:
        stop_kernel(handle)


# ------------------------------------------------ (7) connection takeover
@pytest.mark.parametrize("channel", ["shell", "control"])
def test_a_reconnect_with_the_clients_identity_is_answered_before_the_old_connection_closes(kernel, channel):
    """jupyter_server replaces a websocket's stale connection with new sockets of the same
    identity (the session id), and KernelManager.client() reuses its session, so the
    kernel may see the new connection before the old one's close.  The new one takes the
    identity over at once (ROUTER_HANDOVER, as in ipykernel, ipykernel#270); otherwise
    it is ignored, and its frontend waits for replies that never come (restarts in the
    benchmarks hung 1 time in ~100).  Here the old connection stays open throughout."""
    old = kernel.kc
    new = kernel.km.client()
    assert new.session.bsession == old.session.bsession
    new.start_channels(iopub=False, stdin=False, hb=False)
    try:
        msg = new.session.msg("kernel_info_request")
        getattr(new, f"{channel}_channel").send(msg)  # once, as a frontend that waits for its reply
        reply = get_reply(new, msg["header"]["msg_id"], timeout=10, channel=channel)
        assert reply["msg_type"] == "kernel_info_reply"
    finally:
        new.stop_channels()


def test_an_encrypted_client_that_reconnects_with_its_identity_is_answered(encrypted):
    """The same over CurveZMQ: a client's new connection takes its identity over at once
    (ipykernel#270); clients of one KernelManager share its session id, hence their
    identity."""
    km = encrypted.km
    for i in range(20):
        encrypted.kc.stop_channels()
        encrypted.kc = km.client()
        assert encrypted.kc.session.bsession == km.session.bsession
        encrypted.kc.start_channels()
        encrypted.kc.wait_for_ready(timeout=30)
        _, iopub = execute_ok(encrypted.kc, f"print({i})")
        assert stream_text(iopub) == f"{i}\n"
