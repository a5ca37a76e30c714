"""jupyter_server serving relaykernel over SSH, seen from a REST and websocket client.

jupyter_server (as a gateway host: gateway_provisioners' provisioners run inside it) finds the
generated DistributedProvisioner spec; the client talks to it directly, or to a second
jupyter_server started with ``--gateway-url`` in front of it, as JupyterLab is run against a
gateway; the test starts a kernel with ``POST /api/kernels``,
runs cells over ``/api/kernels/ID/channels`` as JupyterLab does, crashes the worker with a
segfault and runs the next cell, checks that an ipywidgets slider came back in the new worker
and still follows the client's updates, then deletes the kernel.  The kernel runs through the
test's own sshd on 127.0.0.2 (test_ssh.py).  What the client sees between the crash's reply
and the next cell's result is printed (``-s`` shows it), never asserted against a target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import websocket

from tests.deploy.test_ssh import SPEC_NAME, accepts, free_port, sshd, write_ssh_spec
from tests.kernel.helpers import Deadline, kernel_env, relaykernel_only, wait_for

pytestmark = relaykernel_only

__all__ = ["sshd"]  # the fixture, imported for this module's tests

TOKEN = uuid.uuid4().hex
SLIDER_VALUES = ("[x.value for x in __import__('ipywidgets').Widget.widgets.values() "
                 "if isinstance(x, __import__('ipywidgets').IntSlider)]")


class Server:
    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path):
        self.base, self.proc, self.log = f"http://127.0.0.1:{port}", proc, log
        self.gateway = self  # the server that runs the kernels

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method,
                                     headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=90) as resp:
            text = resp.read()
        return json.loads(text) if text else None


@contextlib.contextmanager
def running_server(name: str, tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[Server]:
    """``python -m jupyter_server ARGS`` on a free port of 127.0.0.1, stopped by pid at the end."""
    port = free_port("127.0.0.1")
    log = tmp_path / f"{name}.log"
    (tmp_path / name).mkdir()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
                                 "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
                                 f"--ServerApp.root_dir={tmp_path / name}", "--ServerApp.port_retries=0",
                                 *(["--allow-root"] if os.geteuid() == 0 else []), *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or accepts("127.0.0.1", port), timeout=60,
                 what=f"{name} to listen")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield Server(port, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(params=["direct", "gateway-url"])
def server(request: pytest.FixtureRequest, sshd: tuple[int, Path], tmp_path: Path) -> Iterator[Server]:
    """The server the client talks to: the gateway host itself, or a second jupyter_server started
    with ``--gateway-url`` pointing at it (as JupyterLab is run in front of a gateway)."""
    ssh_port, home = sshd
    spec_dir = write_ssh_spec()
    env = {**kernel_env(), "HOME": str(home), "GP_SSH_PORT": str(ssh_port), "GP_RESPONSE_IP": "127.0.0.1",
           "GP_RESPONSE_PORT": "31877", "GP_KERNEL_LOG_DIR": str(tmp_path), "KERNEL_USERNAME": "relay-test"}
    env.pop("GP_REMOTE_PWD", None)
    try:
        with running_server("gateway", tmp_path, env) as gateway:
            if request.param == "direct":
                yield gateway
                return
            with running_server("frontend", tmp_path, kernel_env(), f"--gateway-url={gateway.base}",
                                f"--GatewayClient.auth_token={TOKEN}") as frontend:
                frontend.gateway = gateway
                yield frontend
    finally:
        shutil.rmtree(spec_dir)


class Channels:
    """The kernel's websocket, JSON messages with a ``channel`` field (jupyter_server's default protocol)."""

    def __init__(self, server: Server, kernel_id: str):
        url = server.base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?token={TOKEN}"
        self.ws = websocket.create_connection(url, timeout=30)
        self.session = uuid.uuid4().hex

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "session": self.session, "username": "test",
                  "version": "5.3", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "channel": "shell",
                                 "content": content}))
        return msg_id

    def execute(self, code: str) -> str:
        return self.send("execute_request", {"code": code, "silent": False, "store_history": True,
                                             "user_expressions": {}, "allow_stdin": False})

    def until_idle(self, msg_id: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Every message for ``msg_id`` up to its idle status on iopub."""
        deadline = Deadline(timeout)
        seen: list[dict[str, Any]] = []
        while True:
            msg, before = self.until(msg_id, "status", deadline.remaining())
            seen += before + [msg]
            if msg["content"]["execution_state"] == "idle":
                return seen

    def evaluate(self, expr: str) -> str:
        result, _ = self.until(self.execute(expr), "execute_result", 60)
        text: str = result["content"]["data"]["text/plain"]
        return text

    def until(self, msg_id: str, msg_type: str, timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The first ``msg_type`` message for ``msg_id``, and every message for it before."""
        deadline = Deadline(timeout)
        seen: list[dict[str, Any]] = []
        while not deadline.expired():
            self.ws.settimeout(max(0.1, deadline.remaining()))
            # control frames too: recv() alone answers the server's pings and reads on, each read
            # with a fresh timeout, so a server that pings would keep it waiting past the deadline
            opcode, frame = self.ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise AssertionError(f"the server closed the kernel's websocket waiting for {msg_type}")
            if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                continue
            msg = json.loads(frame.data)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == msg_type:
                return msg, seen
            seen.append(msg)
        raise AssertionError(f"no {msg_type} for {msg_id} in {timeout}s; got {[m['msg_type'] for m in seen]}")

    def close(self) -> None:
        self.ws.close()


def test_jupyter_server_runs_relaykernel_over_ssh_through_a_crash(server: Server) -> None:
    kernel = server.request("POST", "/api/kernels", {"name": SPEC_NAME})
    assert kernel["id"] in [k["id"] for k in server.gateway.request("GET", "/api/kernels")]
    channels = Channels(server, kernel["id"])
    tree: list[psutil.Process] = []
    try:
        stream, _ = channels.until(channels.execute("import os; print(6 * 7, os.getpid())"), "stream", 60)
        assert stream["content"]["text"].startswith("42 ")
        worker = psutil.Process(int(stream["content"]["text"].split()[1]))
        launcher = next(p for p in worker.parents() if "relaykernel.launch" in p.cmdline())
        assert os.getsid(launcher.pid) != os.getsid(server.proc.pid), "started through sshd, not by the server"
        tree = [launcher, *launcher.children(recursive=True)]

        # a widget, moved by the "frontend" before the crash
        opened = [m for m in channels.until_idle(channels.execute("import ipywidgets; s = ipywidgets.IntSlider(3)"))
                  if m["msg_type"] == "comm_open"
                  and m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"]
        slider = opened[0]["content"]["comm_id"]
        channels.until_idle(channels.send("comm_msg", {"comm_id": slider, "data": {
            "method": "update", "state": {"value": 7}, "buffer_paths": []}}))
        assert channels.evaluate("s.value") == "7"

        reply, _ = channels.until(channels.execute("import ctypes; ctypes.string_at(0)"), "execute_reply", 60)
        crash_reply_at = time.monotonic()
        assert reply["content"]["ename"] == "WorkerDied", reply["content"]
        result, _ = channels.until(channels.execute("6 * 7"), "execute_result", 60)
        next_result_at = time.monotonic()
        assert result["content"]["data"]["text/plain"] == "42"
        route = "the gateway host's" if server.gateway is server else "a --gateway-url server's"
        print(f"\ncrash reply -> next result, seen on {route} websocket: "
              f"{(next_result_at - crash_reply_at) * 1000:.0f} ms")
        assert server.request("GET", f"/api/kernels/{kernel['id']}")["execution_state"] != "dead"

        # the widget came back in the new worker with its value, and the frontend still moves it
        assert channels.evaluate(SLIDER_VALUES) == "[7]"
        channels.until_idle(channels.send("comm_msg", {"comm_id": slider, "data": {
            "method": "update", "state": {"value": 9}, "buffer_paths": []}}))
        assert channels.evaluate(SLIDER_VALUES) == "[9]"
    finally:
        channels.close()
        server.request("DELETE", f"/api/kernels/{kernel['id']}")
    wait_for(lambda: not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
             timeout=30, what="the kernel's processes to end after DELETE")
