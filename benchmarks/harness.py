"""Kernel start/stop and the one client every kernel is driven by.

Fairness is the point of this module: every kernel column is started through
the same ``jupyter_client.KernelManager`` path, talked to through the same
``BlockingKernelClient`` sockets and the same zmq context options, and every
wait goes through :class:`Waiter`, which has a timeout on every receive.
Nothing here knows which kernel is the "subject" and which is the baseline.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import zmq
from jupyter_client import BlockingKernelClient, KernelManager
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Short names the CLI accepts, mapped to the kernelspec the harness writes.
#: ``python3`` is overridden on purpose so that the baseline is always the
#: venv's ipykernel, whatever else is installed on the Jupyter path.
IPYKERNEL_ALIASES = ("ipykernel", "python3")
RELAY_ALIASES = ("relaykernel",)
#: relaykernel with Supervisor.snapshots off (the snapshot measurements' second column)
RELAY_NO_SNAPSHOTS = "relaykernel-nosnap"
RELAY_PROVISIONER = "relaykernel-provisioner"

#: Client sockets retry a refused connect every RECONNECT_IVL ms.  The zmq
#: default (100 ms) would quantise startup/restart times to 100 ms steps for
#: every kernel, hiding real differences, so both columns get 10 ms.
RECONNECT_IVL_MS = 10


class BenchError(Exception):
    """A measurement could not produce a validated figure (reported as n/a)."""


class KernelDied(BenchError):
    """The kernel process exited while we were waiting for it."""


def relay_provisioner_available() -> bool:
    """True if relaykernel's provisioner is registered (i.e. the package is installed)."""
    eps = entry_points(group="jupyter_client.kernel_provisioners")
    return any(ep.name == RELAY_PROVISIONER for ep in eps)


def write_kernelspecs() -> tempfile.TemporaryDirectory:
    """Write the ipykernel/relaykernel specs into a temp dir prepended to JUPYTER_PATH.

    Doing this ourselves (instead of trusting whatever spec is installed)
    guarantees both kernels run on this interpreter, this venv's packages.
    xeus-python gets an ``xpython`` spec the same way when it is installed here;
    other names are still found on the normal Jupyter path.
    """
    tmp = tempfile.TemporaryDirectory(prefix="relaybench-specs-")
    kdir = Path(tmp.name) / "kernels"
    ipy = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ipykernel (bench)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    relay: dict[str, Any] = {
        "argv": [sys.executable, "-m", "relaykernel", "-f", "{connection_file}"],
        "display_name": "relaykernel (bench)",
        "language": "python",
        "metadata": {},
    }
    if relay_provisioner_available():
        relay["metadata"]["kernel_provisioner"] = {"provisioner_name": RELAY_PROVISIONER}
    specs = [(IPYKERNEL_ALIASES, ipy), (RELAY_ALIASES, relay),
             ((RELAY_NO_SNAPSHOTS,), {**relay, "display_name": "relaykernel, no snapshots (bench)",
                                      "argv": [*relay["argv"], "--Supervisor.snapshots=False"]})]
    if importlib.util.find_spec("xpython_launcher") is not None:  # xeus-python, in this venv
        specs.append((("xpython",), {
            "argv": [sys.executable, "-m", "xpython_launcher", "-f", "{connection_file}"],
            "display_name": "xeus-python (bench)", "language": "python", "metadata": {}}))
    for names, spec in specs:
        for name in names:
            (kdir / name).mkdir(parents=True)
            (kdir / name / "kernel.json").write_text(json.dumps(spec, indent=1))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([tmp.name] + ([old] if old else []))
    return tmp


def kernelspec_exists(name: str) -> bool:
    try:
        KernelSpecManager().get_kernel_spec(name)
        return True
    except NoSuchKernel:
        return False


def make_context() -> zmq.Context:
    """A zmq context whose sockets share the harness' socket defaults."""
    ctx = zmq.Context()
    ctx.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    ctx.setsockopt(zmq.LINGER, 0)
    return ctx


@dataclass
class Kernel:
    """One running kernel: its manager, its client and a label for the table."""

    label: str
    name: str
    km: KernelManager
    kc: BlockingKernelClient
    waiter: Waiter
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        prov = self.km.provisioner
        return getattr(prov, "pid", None) if prov is not None else None

    def alive(self) -> bool:
        return self.km.is_alive()


def new_client(km: KernelManager, ctx: zmq.Context) -> tuple[BlockingKernelClient, Waiter]:
    kc = km.client(context=ctx)
    # Only shell + iopub: the control/stdin/hb channels are not measured and
    # the heartbeat thread would add noise to both columns.
    kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
    return kc, Waiter(kc)


def launch(label: str, name: str, ctx: zmq.Context) -> tuple[Kernel, float]:
    """Start ``name`` and connect a client; returns the kernel and the t0 of the launch."""
    km = KernelManager(kernel_name=name)
    t0 = time.perf_counter()
    try:
        km.start_kernel(cwd=str(REPO_ROOT))
    except Exception as e:  # noqa: BLE001 - reported as n/a for this column
        raise BenchError(f"start failed: {type(e).__name__}: {e}") from None
    kc, waiter = new_client(km, ctx)
    return Kernel(label, name, km, kc, waiter), t0


def start_kernel(label: str, name: str, ctx: zmq.Context, timeout: float) -> Kernel:
    """Launch ``name`` and make sure it is usable (kernel_info, then ``1+1`` → ``2``)."""
    k, _ = launch(label, name, ctx)
    try:
        k.waiter.kernel_info(timeout, alive=k.alive)
        first_result(k, timeout)
    except BaseException:
        stop_kernel(k)
        raise
    return k


def first_result(k: Kernel, timeout: float) -> None:
    """Run ``1+1`` until its execute_result is seen on iopub.

    Right after the first kernel_info_reply the iopub subscription may not
    have reached the kernel yet (a PUB socket drops messages for subscribers
    it does not know), so a result can legitimately be lost.  If the reply
    arrives but no result follows within a short grace period we send the
    cell again; the retry time is part of the figure, as a real frontend
    would pay it too.
    """
    deadline = time.perf_counter() + timeout
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise BenchError("no execute_result for 1+1 before timeout")
        r = k.waiter.execute(
            "1+1", min(remaining, timeout), want_result=True, alive=k.alive, result_grace=0.5
        )
        if r.reply.get("status") != "ok":
            raise BenchError(f"1+1 failed: {r.reply.get('ename')}: {r.reply.get('evalue')}")
        if r.result is not None:
            if r.result != "2":
                raise BenchError(f"1+1 gave {r.result!r}")
            return


def stop_kernel(k: Kernel) -> None:
    """Stop client channels and shut the kernel down (forcefully if it hangs)."""
    with contextlib.suppress(Exception):
        k.kc.stop_channels()
    try:
        if k.km.has_kernel:
            k.km.shutdown_kernel(now=False)
    except Exception:  # noqa: BLE001 - fall back to a hard kill
        with contextlib.suppress(Exception):
            k.km.shutdown_kernel(now=True)


@dataclass
class ExecResult:
    reply: dict
    result: str | None
    stdout: list[str]
    t_reply: float  # seconds after sending
    t_idle: float | None
    t_sent: float  # perf_counter() when the request was sent


_NOBLOCK = int(zmq.NOBLOCK)


class Waiter:
    """Receives on the client's shell and iopub sockets with one poller.

    Every message is checked (HMAC with the client's key, no replayed
    signature) and fully JSON-parsed by the same code for both kernels, so both
    pay the identical client-side cost.  It skips jupyter_client's
    ``Session.deserialize``, which also converts header dates with dateutil:
    ~50 us a message against ~15 us here.  At three iopub messages per comm
    echo that conversion made the client, not the kernel, the bottleneck of
    the pipelined test.
    """

    def __init__(self, kc: BlockingKernelClient) -> None:
        self.kc = kc
        self.session = kc.session
        self.shell = kc.shell_channel.socket
        self.iopub = kc.iopub_channel.socket
        self.poller = zmq.Poller()
        self.poller.register(self.shell, zmq.POLLIN)
        self.poller.register(self.iopub, zmq.POLLIN)
        self._seen: set[bytes] = set()

    # -- low level -----------------------------------------------------------
    def _recv(self, sock: zmq.Socket) -> dict:
        # recv_multipart asks getsockopt(RCVMORE) per frame through pyzmq's enums;
        # a frame received with copy=False knows itself whether more follow
        frame = sock.recv(_NOBLOCK, copy=False)
        parts = [frame.bytes]
        while frame.more:
            frame = sock.recv(0, copy=False)
            parts.append(frame.bytes)
        _, parts = self.session.feed_identities(parts)
        if len(parts) < 5:
            raise BenchError(f"malformed message: {len(parts)} frames")
        signature, header, parent, metadata, content = parts[:5]
        if self.session.auth is not None:
            if not hmac.compare_digest(signature, self.session.sign([header, parent, metadata, content])):
                raise BenchError("message with a bad signature")
            if signature in self._seen:
                raise BenchError("replayed message signature")
            self._seen.add(signature)
        h = json.loads(header)
        return {"header": h, "msg_id": h["msg_id"], "msg_type": h["msg_type"],
                # xeus-python sends `null` for "no parent" where the spec says {}
                "parent_header": json.loads(parent) or {}, "metadata": json.loads(metadata) or {},
                "content": json.loads(content), "buffers": parts[5:]}

    def send(self, msg: dict, buffers: list | None = None) -> None:
        self.session.send(self.shell, msg, buffers=buffers)

    def drain(self, quiet: float = 0.05, limit: float = 5.0) -> int:
        """Discard pending messages until ``quiet`` s pass with nothing arriving."""
        n = 0
        end = time.perf_counter() + limit
        while time.perf_counter() < end:
            events = dict(self.poller.poll(quiet * 1000))
            if not events:
                break
            for sock in events:
                self._recv(sock)
                n += 1
        return n

    def loop(
        self,
        on_msg: Callable[[str, dict], bool],
        timeout: float,
        alive: Callable[[], bool] | None = None,
        what: str = "message",
    ) -> None:
        """Feed every message to ``on_msg(channel, msg)`` until it returns True.

        Raises BenchError on timeout, KernelDied if ``alive()`` turns False
        while nothing is arriving.
        """
        deadline = time.perf_counter() + timeout
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise BenchError(f"timeout ({timeout:.3g} s) waiting for {what}")
            events = self.poller.poll(min(remaining, 0.25) * 1000)
            if not events:
                if alive is not None and not alive():
                    raise KernelDied(f"kernel died while waiting for {what}")
                continue
            for sock, _ in events:
                # drain everything readable on this socket before polling again
                while True:
                    try:
                        msg = self._recv(sock)
                    except zmq.Again:
                        break
                    chan = "shell" if sock is self.shell else "iopub"
                    if on_msg(chan, msg):
                        return

    # -- requests --------------------------------------------------------------
    def kernel_info(self, timeout: float, alive: Callable[[], bool] | None = None) -> dict:
        msg = self.session.msg("kernel_info_request", {})
        self.send(msg)
        out: dict = {}

        def on(chan: str, m: dict) -> bool:
            if chan == "shell" and m["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                out.update(m)
                return True
            return False

        self.loop(on, timeout, alive, "kernel_info_reply")
        return out

    def execute(
        self,
        code: str,
        timeout: float,
        *,
        want_result: bool = False,
        collect_stdout: bool = False,
        alive: Callable[[], bool] | None = None,
        result_grace: float | None = None,
        wait_idle: bool = True,
    ) -> ExecResult:
        """Send one execute_request; return when its reply AND idle status arrived.

        With ``result_grace`` set, once the reply is in, wait at most that long
        for the iopub side (idle / result) and return without it instead of
        failing (used only at startup, see :func:`first_result`).
        """
        msg = self.session.msg(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        mid = msg["header"]["msg_id"]
        st: dict[str, Any] = {"reply": None, "idle": None, "result": None, "stdout": []}
        t0 = time.perf_counter()
        self.send(msg)

        def done() -> bool:
            if st["reply"] is None or (wait_idle and st["idle"] is None):
                return False
            return not want_result or st["result"] is not None

        def on(chan: str, m: dict) -> bool:
            if m["parent_header"].get("msg_id") != mid:
                return False
            now = time.perf_counter()
            t = m["msg_type"]
            if chan == "shell" and t == "execute_reply":
                st["reply"] = (m, now)
            elif t == "status" and m["content"]["execution_state"] == "idle":
                st["idle"] = now
            elif t == "execute_result":
                st["result"] = m["content"]["data"].get("text/plain")
            elif t == "stream" and collect_stdout and m["content"]["name"] == "stdout":
                st["stdout"].append(m["content"]["text"])
            return done()

        what = f"execute {code[:30]!r}"
        deadline = t0 + timeout
        # phase 1: until the reply (or everything) arrived
        self.loop(lambda c, m: on(c, m) or st["reply"] is not None, timeout, alive, what)
        if not done():
            # phase 2: the iopub side (idle / result) of the same request
            remaining = max(deadline - time.perf_counter(), 0.001)
            if result_grace is not None:
                try:
                    self.loop(on, min(remaining, result_grace), alive, what)
                except KernelDied:
                    raise
                except BenchError:
                    pass  # result/idle lost: caller decides (see first_result)
            else:
                self.loop(on, remaining, alive, what)
        reply, t_reply = st["reply"]
        return ExecResult(
            reply["content"],
            st["result"],
            st["stdout"],
            t_reply - t0,
            (st["idle"] - t0) if st["idle"] else None,
            t0,
        )
