"""A stand-in for the gateway's side of the kernel launcher protocol, for the tests.

It does what gateway_provisioners' ResponseManager and RemoteProvisioner do, written
from their protocol: an RSA key pair whose public half goes on the launcher's command
line (base64 DER, PEM armour stripped), a TCP response address that receives one
payload per launch (read until EOF, then decrypted: RSA PKCS#1 v1.5 unwraps the AES
key, AES-ECB with PKCS#7 padding the connection info), and the listener requests
(``{"signum": N}``, ``{"shutdown": 1}``) sent to the launcher's ``comm_port``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import psutil
from Cryptodome.Cipher import AES, PKCS1_v1_5
from Cryptodome.PublicKey import RSA
from Cryptodome.Util.Padding import unpad

from tests.kernel.helpers import Deadline, kernel_env


class FakeGateway:
    def __init__(self) -> None:
        self.private_key = RSA.generate(1024)
        pem = self.private_key.publickey().export_key("PEM").decode()
        self.public_key = "".join(line for line in pem.splitlines() if "-----" not in line)
        self.response = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.response.bind(("127.0.0.1", 0))
        self.response.listen(4)
        host, port = self.response.getsockname()
        self.response_address = f"{host}:{port}"

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next launcher's connection info, decrypted."""
        self.response.settimeout(timeout)
        conn, _ = self.response.accept()
        deadline = Deadline(timeout)
        data = b""
        with conn:
            while not deadline.expired():
                conn.settimeout(max(0.1, deadline.remaining()))
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        return self.decrypt(data)

    def decrypt(self, data: bytes) -> dict[str, Any]:
        payload = json.loads(base64.b64decode(data))
        assert payload["version"] == 1, payload
        aes_key = PKCS1_v1_5.new(self.private_key).decrypt(base64.b64decode(payload["key"]), None)
        assert aes_key is not None, "the AES key does not unwrap with the gateway's private key"
        body = AES.new(aes_key, AES.MODE_ECB).decrypt(base64.b64decode(payload["conn_info"]))
        info: dict[str, Any] = json.loads(unpad(body, 16))
        return info

    def close(self) -> None:
        self.response.close()


def send_listener_request(port: int, request: dict[str, Any], timeout: float = 5.0) -> None:
    """As RemoteProvisioner._send_listener_request: connect, send the JSON, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)


@dataclass
class Launch:
    """A launcher subprocess in a session of its own, so whatever it started can be found."""

    proc: subprocess.Popen[bytes]
    log: str
    seen: list[psutil.Process] = field(default_factory=list)

    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def exit_code(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the launcher still runs after {timeout}s:\n{self.output()[-3000:]}") from None

    def remember_tree(self) -> None:
        try:
            for p in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]:
                if all(p.pid != q.pid for q in self.seen):
                    self.seen.append(p)
        except psutil.NoSuchProcess:
            pass

    def session_processes(self) -> list[psutil.Process]:
        """Live processes in the launcher's session (its pid is the session id)."""
        found = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (OSError, psutil.Error):
                pass
        return found

    def survivors(self) -> list[psutil.Process]:
        alive = {p.pid: p for p in self.session_processes()}
        for p in self.seen:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive[p.pid] = p
            except psutil.Error:
                pass
        return list(alive.values())

    def kill_all(self) -> None:
        """Teardown: SIGKILL the launcher and everything it started, by pid."""
        procs = self.survivors()
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=5)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def start_launcher(log: str, *args: str, env: dict[str, str] | None = None) -> Launch:
    """``python -m relaykernel.launch ARGS``, its output (and the kernel's) going to the file ``log``;
    ``env`` adds to its environment."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "relaykernel.launch", *args],
                                env={**kernel_env(), **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Launch(proc, log)


def exercise_remote_kernel(kc: Any, km: Any, also_ready: Any = None) -> None:
    """What every remote-launch test asks of the kernel: code runs, a segfaulting cell
    gets WorkerDied and the next cell still runs, and KernelManager.interrupt_kernel
    (provisioner -> the launcher's listener) interrupts a sleeping cell.
    ``also_ready``: a further condition for the sleeping cell to count as started."""
    from tests.kernel.helpers import execute, execute_ok, get_reply, stream_text, wait_for

    _, iopub = execute_ok(kc, "print(6 * 7)")
    assert stream_text(iopub) == "42\n"
    reply, _ = execute(kc, "import ctypes; ctypes.string_at(0)", timeout=60)
    assert reply["content"]["ename"] == "WorkerDied", reply["content"]
    _, iopub = execute_ok(kc, "print('still here')", timeout=60)
    assert stream_text(iopub) == "still here\n"

    msg_id = kc.execute("import time; time.sleep(60)")
    wait_for(lambda: (also_ready is None or also_ready()) and _started(kc, msg_id), timeout=30,
             what="the cell to start")
    km.interrupt_kernel()
    reply = get_reply(kc, msg_id, timeout=30)
    assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]


def _started(kc: Any, msg_id: str) -> bool:
    from queue import Empty

    try:
        msg = kc.get_iopub_msg(timeout=0.2)
    except Empty:
        return False
    return bool(msg["msg_type"] == "execute_input" and msg["parent_header"].get("msg_id") == msg_id)
