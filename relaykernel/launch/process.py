"""The launcher process: start relaykernel for a gateway, then relay the gateway's requests.

One thread does everything: it writes the connection file, starts the supervisor
(``python -m relaykernel -f FILE`` plus the arguments the launcher does not know),
sends the encrypted connection info to the gateway, then waits on three things — the
listener socket (the gateway's ``{"signum": N}`` and ``{"shutdown": 1}``), the
supervisor's exit (a pidfd) and its own signals (a wakeup socket).  Signals go to the
supervisor, which forwards SIGINT to the running cell and survives it; a shutdown is
SIGTERM, a bounded wait, then SIGKILL.  When the supervisor ends (a shutdown_request
from the gateway, say), the launcher ends with its exit code and closes the listener,
which is how the gateway's poll learns the kernel is gone.

The supervisor dies with the launcher (``PR_SET_PDEATHSIG``: a gateway that SIGKILLs
the launcher's pid leaves nothing behind), and its workers die with it.

If the connection info cannot be delivered, the supervisor is stopped and the
launcher exits 1: a kernel nobody knows how to reach must not keep running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from types import FrameType
from typing import Any

from .protocol import (
    LaunchError,
    PortRange,
    PublicKey,
    bind_in_range,
    curve_keypair,
    deliver,
    from_env,
    kernel_ports,
    parse_response_address,
    transport_encryption,
    write_connection_file,
)

log = logging.getLogger("relaykernel.launch")

#: Exit codes: the arguments are unusable (nothing started); the launch failed after starting.
EXIT_USAGE = 2
EXIT_FAILED = 1

#: The environment variable with more arguments for the kernel (a container has no argv of the spec's).
ARGS_ENV = "RELAYKERNEL_ARGS"

#: A request on the listener larger than this is not the gateway's.
MAX_REQUEST = 64 * 1024


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m relaykernel.launch",
        description="Start relaykernel for Jupyter Enterprise Gateway / gateway_provisioners. "
                    "Arguments it does not know (e.g. --Supervisor.memory_limit=4) go to the kernel.")
    # nargs="?" as in the gateway's own launchers: the gateway substitutes "" for a placeholder it
    # does not fill, and DistributedProvisioner joins argv unquoted, so a value can be missing.
    # Each also has Enterprise Gateway's spelling (--RemoteProcessProxy.kernel-id ...).
    def protocol_arg(name: str, help: str) -> None:
        p.add_argument(f"--{name}", f"--RemoteProcessProxy.{name}", nargs="?", help=help)

    protocol_arg("kernel-id", "the gateway's kernel id (env KERNEL_ID)")
    protocol_arg("port-range", "LOW..HIGH for every port, 0..0 for any (env PORT_RANGE)")
    protocol_arg("response-address", "IP:PORT where the gateway waits for the connection info (env RESPONSE_ADDRESS)")
    protocol_arg("public-key", "the gateway's RSA public key, base64 DER (env PUBLIC_KEY)")
    protocol_arg("transport-encryption", "auto|required: give the kernel CurveZMQ keys (env TRANSPORT_ENCRYPTION)")
    for ignored in ("spark-context-initialization-mode", "cluster-type", "kernel-class-name"):
        protocol_arg(ignored, "accepted for the gateway's kernelspecs; ignored")
    p.add_argument("--ip", default="0.0.0.0",  # the gateway connects from another host
                   help="address the kernel and the listener bind (default: %(default)s)")
    p.add_argument("--response-timeout", type=float, default=30.0,
                   help="seconds to keep trying the response address (default: %(default)s)")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="seconds the kernel gets to stop after SIGTERM before SIGKILL (default: %(default)s)")
    p.add_argument("--kernel-name", default="relaykernel", help=argparse.SUPPRESS)
    return p


@dataclass
class Plan:
    """Everything checked before anything starts."""

    kernel_id: str
    ports: PortRange
    response: tuple[str, int]
    key: PublicKey
    encryption: str | None
    ip: str
    response_timeout: float
    shutdown_grace: float
    kernel_name: str


def plan(args: argparse.Namespace) -> Plan:
    kernel_id = from_env("kernel_id", args.kernel_id)
    if not kernel_id or kernel_id.startswith("{"):
        raise LaunchError("no --kernel-id (nor KERNEL_ID): the gateway could not match the answer to its kernel")
    return Plan(
        kernel_id=kernel_id,
        ports=PortRange.parse(from_env("port_range", args.port_range)),
        response=parse_response_address(from_env("response_address", args.response_address)),
        key=PublicKey(from_env("public_key", args.public_key)),
        encryption=transport_encryption(from_env("transport_encryption", args.transport_encryption)),
        ip=args.ip, response_timeout=args.response_timeout, shutdown_grace=args.shutdown_grace,
        kernel_name=args.kernel_name)


def _die_with_parent() -> None:
    """In the supervisor, before exec: SIGTERM when the launcher dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_supervisor(connection_file: str, kernel_args: list[str]) -> subprocess.Popen[bytes]:
    from ..kernelspec import BOOTSTRAP

    argv = [sys.executable, "-c", BOOTSTRAP, "-f", connection_file, *kernel_args]
    log.info("starting the kernel: %s", " ".join(argv[:1] + argv[3:]))
    return subprocess.Popen(argv, preexec_fn=_die_with_parent)  # noqa: PLW1509 - one thread so far


class Launcher:
    """The running launch: the supervisor, the listener, and how both end."""

    def __init__(self, the_plan: Plan, kernel_args: list[str]):
        self.plan = the_plan
        self.kernel_args = kernel_args
        self.stopping = False
        self.listener = bind_in_range(the_plan.ip, the_plan.ports)
        self.listener.listen(8)
        self.listener.setblocking(False)
        fd, self.connection_file = tempfile.mkstemp(prefix=f"kernel-{the_plan.kernel_id}_", suffix=".json")
        os.close(fd)
        self.supervisor: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        try:
            info = self._connection_info()
            self.supervisor = start_supervisor(self.connection_file, self.kernel_args)
            try:
                deliver(self.plan.response, self.plan.key.seal(info), self.plan.response_timeout)
            except LaunchError:
                self.stop_supervisor()
                raise
            log.info("connection info sent to %s:%d; listening on port %d", *self.plan.response,
                     info["comm_port"])
            return self.serve()
        finally:
            self.listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.connection_file)

    def _connection_info(self) -> dict[str, Any]:
        ports = kernel_ports(self.plan.ip, self.plan.ports)
        info = write_connection_file(self.connection_file, self.plan.ip, ports, self.plan.kernel_name,
                                     curve_keypair(self.plan.encryption))
        return {**info, "pid": os.getpid(), "pgid": os.getpgid(0), "comm_port": self.listener.getsockname()[1],
                "kernel_id": self.plan.kernel_id}

    # ------------------------------------------------------------ serving
    def serve(self) -> int:
        assert self.supervisor is not None
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        sel = selectors.DefaultSelector()
        pidfd = _pidfd(self.supervisor.pid)
        try:
            sel.register(self.listener, selectors.EVENT_READ, "request")
            sel.register(wake_r, selectors.EVENT_READ, "signal")
            if pidfd is not None:
                sel.register(pidfd, selectors.EVENT_READ, "exit")
            while not self.stopping and self.supervisor.poll() is None:
                for key, _ in sel.select(timeout=None if pidfd is not None else 0.5):
                    if key.data == "request":
                        self._serve_request()
                    elif key.data == "signal":
                        with contextlib.suppress(OSError):
                            wake_r.recv(4096)
            if self.supervisor.poll() is None:
                self.stop_supervisor()
        finally:
            sel.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in previous.items():
                signal.signal(s, handler)
            wake_r.close()
            wake_w.close()
            if pidfd is not None:
                os.close(pidfd)
        code = self.supervisor.wait()
        log.info("the kernel exited with %d", code)
        if self.stopping and code == -signal.SIGTERM:
            return 0  # asked to stop, and stopped (before its handler was in place, SIGTERM's default)
        return code if code >= 0 else 128 - code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.supervisor is not None:
            self._signal_supervisor(signum)  # an interrupt for the cell, not for the launcher
        elif signum == signal.SIGTERM:
            self.stopping = True

    def _serve_request(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        with conn:
            request = _read_request(conn)
        if not isinstance(request, dict):
            return
        signum = request.get("signum")
        if isinstance(signum, int) and signum > 0:
            log.info("gateway asks for signal %d", signum)
            self._signal_supervisor(signum)
        if request.get("shutdown"):
            log.info("gateway asks for shutdown")
            self.stopping = True

    def _signal_supervisor(self, signum: int) -> None:
        assert self.supervisor is not None
        if self.supervisor.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.supervisor.pid, signum)

    def stop_supervisor(self) -> None:
        """SIGTERM (the supervisor stops its workers), a bounded wait, then SIGKILL."""
        proc = self.supervisor
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(self.plan.shutdown_grace)
        except subprocess.TimeoutExpired:
            log.warning("the kernel ignored SIGTERM for %g s: killing it", self.plan.shutdown_grace)
            proc.kill()
            proc.wait()


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: the loop polls instead
        return None


def _read_request(conn: socket.socket) -> Any:
    """One JSON request, read until the gateway closes its end (bounded in time and size)."""
    conn.settimeout(5.0)
    data = b""
    try:
        while len(data) <= MAX_REQUEST:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        return json.loads(data) if data else None
    except (OSError, ValueError) as exc:
        log.warning("ignoring a listener request that is not JSON (%s)", exc)
        return None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s", level=logging.INFO)
    args, kernel_args = build_parser().parse_known_args(argv)
    # a kernel image gets the kernel's options from the spec's env (relaykernel/launch/specs.py)
    kernel_args += shlex.split(os.environ.get(ARGS_ENV, ""))
    try:
        the_plan = plan(args)
    except LaunchError as exc:
        print(f"relaykernel.launch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return Launcher(the_plan, kernel_args).run()
    except LaunchError as exc:
        print(f"relaykernel.launch: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
