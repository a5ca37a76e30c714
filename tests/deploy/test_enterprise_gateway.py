"""Jupyter Enterprise Gateway 3.3 itself serving relaykernel, seen through ``--gateway-url``.

EG 3.3 pins jupyter_client<7, jupyter_server<2 and pyzmq<25, so it runs from a virtualenv of
its own, ``.venv-eg``, which ``deploy/enterprise-gateway.sh`` makes from
``deploy/enterprise-gateway-requirements.txt`` (and leaves as it is when it already matches).
If that install fails, the test fails and says why: nothing here is skipped.

The kernelspec is generated (``python -m relaykernel.launch.specs --gateway enterprise-gateway``):
EG's DistributedProcessProxy runs ``python -m relaykernel.launch`` with the project's own
python over SSH, through the test's sshd on 127.0.0.2 (test_ssh.py), and decrypts its answer
with EG's own ResponseManager.  A jupyter_server from the project's venv, started with
``--gateway-url`` pointing at EG, is what the client talks to, over REST and the kernel
websocket, as JupyterLab does.  What the client sees between the crash's reply and the next
cell's result is printed (``-s`` shows it), never asserted against a target.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.deploy.test_server_ssh import SLIDER_VALUES, TOKEN, Channels, Server, running_server
from tests.deploy.test_ssh import HOST, accepts, free_port, sshd
from tests.kernel.helpers import kernel_env, relaykernel_only, wait_for

pytestmark = [relaykernel_only, pytest.mark.timeout(600)]  # the first run installs EG (~20 s here)

__all__ = ["sshd"]  # the fixture, imported for this module's tests

REPO = Path(__file__).resolve().parents[2]
SPEC_NAME = "relaykernel_eg"
#: The same, with relaykernel's process proxy: restarts swap the worker (relaykernel/launch/eg_proxy.py)
INPLACE_SPEC_NAME = "relaykernel_eg_inplace"
#: Enterprise Gateway refuses to start kernels for root (its unauthorized_users)
KERNEL_USER = "relay-test"


def install_enterprise_gateway() -> str:
    """``deploy/enterprise-gateway.sh``: the path of EG's script, or a failure that says why."""
    try:
        result = subprocess.run(["bash", str(REPO / "deploy" / "enterprise-gateway.sh")],
                                capture_output=True, text=True, timeout=540)
    except subprocess.TimeoutExpired:
        pytest.fail("deploy/enterprise-gateway.sh (Enterprise Gateway's venv) did not finish in 540 s")
    if result.returncode != 0:
        said = [line for line in result.stderr.splitlines() if line.startswith("deploy/enterprise-gateway.sh:")]
        pytest.fail(f"Enterprise Gateway could not be installed into .venv-eg (deploy/enterprise-gateway.sh "
                    f"exited {result.returncode}): {' '.join(said)}\n--- its output, last lines:\n"
                    f"{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def write_eg_spec(share: Path, name: str, *args: str) -> None:
    out = share / "kernels" / name
    result = subprocess.run([sys.executable, "-m", "relaykernel.launch.specs", "--gateway", "enterprise-gateway",
                             "--provisioner", "distributed", "--out", str(out), "--python", sys.executable,
                             "--remote-hosts", HOST, *args, "--", "--Supervisor.interrupt_grace=20"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@contextlib.contextmanager
def running_gateway(script: str, tmp_path: Path, ssh_port: int, home: Path) -> Iterator[Server]:
    """Enterprise Gateway on a free port of 127.0.0.1, knowing only the generated specs; stopped by pid."""
    share = tmp_path / "eg-share"
    write_eg_spec(share, SPEC_NAME)
    write_eg_spec(share, INPLACE_SPEC_NAME, "--inplace-restart")
    port = free_port("127.0.0.1")
    env = {**kernel_env(), "JUPYTER_PATH": str(share), "HOME": str(home), "EG_SSH_PORT": str(ssh_port),
           "EG_RESPONSE_IP": "127.0.0.1", "EG_RESPONSE_PORT": str(free_port("127.0.0.1")),
           "EG_KERNEL_LOG_DIR": str(tmp_path)}
    for name in ("EG_REMOTE_PWD", "EG_REMOTE_USER", "EG_REMOTE_HOSTS", "VIRTUAL_ENV"):
        env.pop(name, None)
    log = tmp_path / "enterprise-gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([script, "--ip=127.0.0.1", f"--port={port}", "--port_retries=0",
                                 f"--EnterpriseGatewayApp.auth_token={TOKEN}",
                                 "--EnterpriseGatewayApp.list_kernels=True"],  # off by default in EG 3
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or accepts("127.0.0.1", port), timeout=60,
                 what="Enterprise Gateway to listen")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield Server(port, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def frontend(sshd: tuple[int, Path], tmp_path: Path) -> Iterator[Server]:
    """A jupyter_server with ``--gateway-url`` in front of Enterprise Gateway (``.gateway`` is EG)."""
    script = install_enterprise_gateway()
    ssh_port, home = sshd
    with running_gateway(script, tmp_path, ssh_port, home) as gateway, \
            running_server("frontend", tmp_path, {**kernel_env(), "KERNEL_USERNAME": KERNEL_USER},
                           f"--gateway-url={gateway.base}", f"--GatewayClient.auth_token={TOKEN}") as server:
        server.gateway = gateway
        yield server


def kernel_tree(channels: Channels, gateway: Server) -> tuple[psutil.Process, list[psutil.Process]]:
    """The launcher that runs the kernel (found from the worker's pid), and its whole tree."""
    stream, _ = channels.until(channels.execute("import os; print(6 * 7, os.getpid())"), "stream", 60)
    assert stream["content"]["text"].startswith("42 ")
    worker = psutil.Process(int(stream["content"]["text"].split()[1]))
    launcher = next(p for p in worker.parents() if "relaykernel.launch" in p.cmdline())
    assert os.getsid(launcher.pid) != os.getsid(gateway.proc.pid), "started through sshd, not by EG"
    return launcher, [launcher, *launcher.children(recursive=True)]


def open_slider(channels: Channels, value: int) -> str:
    """An ipywidgets slider, moved to ``value`` by the client; its comm id."""
    opened = [m for m in channels.until_idle(channels.execute("import ipywidgets; s = ipywidgets.IntSlider(3)"))
              if m["msg_type"] == "comm_open" and m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"]
    slider: str = opened[0]["content"]["comm_id"]
    move_slider(channels, slider, value)
    assert channels.evaluate("s.value") == str(value)
    return slider


def move_slider(channels: Channels, slider: str, value: int) -> None:
    channels.until_idle(channels.send("comm_msg", {"comm_id": slider, "data": {
        "method": "update", "state": {"value": value}, "buffer_paths": []}}))


def gone(tree: list[psutil.Process]) -> bool:
    return not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def naming(kernel_id: str) -> list[psutil.Process]:
    """Live processes whose command line names the kernel (the launcher's does: --kernel-id)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and any(kernel_id in arg for arg in p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_enterprise_gateway_serves_relaykernel_through_a_crash(frontend: Server, tmp_path: Path) -> None:
    gateway = frontend.gateway
    assert "Enterprise Gateway 3.3" in gateway.log.read_text()
    kernel = frontend.request("POST", "/api/kernels", {"name": SPEC_NAME})
    assert kernel["id"] in [k["id"] for k in gateway.request("GET", "/api/kernels")]
    channels = Channels(frontend, kernel["id"])
    tree: list[psutil.Process] = []
    try:
        _, tree = kernel_tree(channels, gateway)
        slider = open_slider(channels, 7)

        reply, _ = channels.until(channels.execute("import ctypes; ctypes.string_at(0)"), "execute_reply", 60)
        crash_reply_at = time.monotonic()
        assert reply["content"]["ename"] == "WorkerDied", reply["content"]
        result, _ = channels.until(channels.execute("6 * 7"), "execute_result", 60)
        next_result_at = time.monotonic()
        assert result["content"]["data"]["text/plain"] == "42"
        print(f"\ncrash reply -> next result, Enterprise Gateway 3.3 behind --gateway-url: "
              f"{(next_result_at - crash_reply_at) * 1000:.0f} ms")
        assert gateway.request("GET", f"/api/kernels/{kernel['id']}")["execution_state"] != "dead"

        # the widget came back in the new worker with its value, and the client still moves it
        assert channels.evaluate(SLIDER_VALUES) == "[7]"
        move_slider(channels, slider, 9)
        assert channels.evaluate(SLIDER_VALUES) == "[9]"

        # Kernel > Interrupt: EG signals through the launcher's listener, the cell gets KeyboardInterrupt
        sleeping = channels.execute("import time; time.sleep(60)")
        channels.until(sleeping, "execute_input", 30)
        frontend.request("POST", f"/api/kernels/{kernel['id']}/interrupt")
        reply, _ = channels.until(sleeping, "execute_reply", 30)
        assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    finally:
        channels.close()
        frontend.request("DELETE", f"/api/kernels/{kernel['id']}")
    wait_for(lambda: gone(tree), timeout=30, what="the kernel's processes to end after DELETE")
    assert naming(kernel["id"]) == []
    assert gateway.request("GET", "/api/kernels") == []
    assert "Accepted publickey" in (tmp_path / "sshd" / "sshd.log").read_text()


def restart(frontend: Server, kernel_id: str, channels: Channels, what: str) -> Channels:
    """``POST /api/kernels/ID/restart`` (Kernel > Restart), then a new websocket and a first cell;
    prints how long the POST took and when the first result came (measured, never asserted)."""
    channels.close()
    started = time.monotonic()
    frontend.request("POST", f"/api/kernels/{kernel_id}/restart")
    posted = time.monotonic()
    channels = Channels(frontend, kernel_id)
    assert channels.evaluate("6 * 7") == "42"
    print(f"\n{what}: POST {(posted - started) * 1000:.0f} ms, "
          f"first result {(time.monotonic() - started) * 1000:.0f} ms after it began")
    return channels


def test_restart_through_enterprise_gateway_keeps_the_supervisor_and_its_comms(frontend: Server) -> None:
    gateway = frontend.gateway
    kernel = frontend.request("POST", "/api/kernels", {"name": INPLACE_SPEC_NAME})
    channels = Channels(frontend, kernel["id"])
    tree: list[psutil.Process] = []
    try:
        launcher, tree = kernel_tree(channels, gateway)
        worker = int(channels.evaluate("os.getpid()"))
        slider = open_slider(channels, 7)
        channels = restart(frontend, kernel["id"], channels, "restart in place through Enterprise Gateway")
        # the same launcher and supervisor, a new worker: variables gone, the widget kept
        assert kernel_tree(channels, gateway)[0].pid == launcher.pid
        assert int(channels.evaluate("os.getpid()")) != worker
        assert channels.evaluate("'s' in dir()") == "False"
        assert channels.evaluate(SLIDER_VALUES) == "[7]"
        move_slider(channels, slider, 9)
        assert channels.evaluate(SLIDER_VALUES) == "[9]"
        # and again: each restart's process proxy is new, and keeps the kernel as the first did
        channels = restart(frontend, kernel["id"], channels, "second restart in place through Enterprise Gateway")
        assert kernel_tree(channels, gateway)[0].pid == launcher.pid
        assert channels.evaluate(SLIDER_VALUES) == "[9]"
        assert gateway.log.read_text().count("restarted in place") == 2
    finally:
        channels.close()
        frontend.request("DELETE", f"/api/kernels/{kernel['id']}")
    wait_for(lambda: gone(tree), timeout=30, what="the kernel's processes to end after DELETE")
    assert naming(kernel["id"]) == []


def test_restart_through_enterprise_gateways_own_proxy_relaunches_the_kernel(frontend: Server) -> None:
    gateway = frontend.gateway
    kernel = frontend.request("POST", "/api/kernels", {"name": SPEC_NAME})
    channels = Channels(frontend, kernel["id"])
    trees: list[psutil.Process] = []
    try:
        launcher, tree = kernel_tree(channels, gateway)
        trees += tree
        open_slider(channels, 7)
        channels = restart(frontend, kernel["id"], channels, "restart (relaunch) through Enterprise Gateway")
        new_launcher, tree = kernel_tree(channels, gateway)
        trees += tree
        assert new_launcher.pid != launcher.pid
        assert channels.evaluate(SLIDER_VALUES) == "[]"  # a new kernel: EG's proxy keeps nothing
        wait_for(lambda: not launcher.is_running() or launcher.status() == psutil.STATUS_ZOMBIE, timeout=30,
                 what="the restarted kernel's launcher to end")
    finally:
        channels.close()
        frontend.request("DELETE", f"/api/kernels/{kernel['id']}")
    wait_for(lambda: gone(trees), timeout=30, what="the kernel's processes to end after DELETE")
    assert naming(kernel["id"]) == []
