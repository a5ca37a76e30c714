"""``python -m relaykernel.launch``: relaykernel behind the gateway kernel launcher protocol.

The test plays the gateway (tests/deploy/gateway.py): it listens on a response address,
starts the launcher with its public key, decrypts the connection info the launcher sends,
talks to the kernel with a jupyter_client client, and sends signal and shutdown requests
to the launcher's listener.  The launcher runs in a session of its own, so every process
it started can be checked gone by pid.  relaykernel only: the launcher starts relaykernel.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from queue import Empty

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from tests.deploy.gateway import FakeGateway, Launch, send_listener_request, start_launcher
from tests.kernel.helpers import (
    execute,
    execute_ok,
    get_reply,
    relaykernel_only,
    stream_text,
    wait_for,
)

pytestmark = relaykernel_only

PORT_RANGE = (30000, 30999)


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    gw = FakeGateway()
    yield gw
    gw.close()


@pytest.fixture
def launches() -> Iterator[list[Launch]]:
    started: list[Launch] = []
    yield started
    for launch in started:
        launch.kill_all()


def launch_args(gateway: FakeGateway, kernel_id: str = "0f0e6b2c-1111-4222-8333-944445555666") -> list[str]:
    """The argv of gateway_provisioners' kernelspecs, placeholders filled as the gateway fills them."""
    return ["--kernel-id", kernel_id, "--port-range", f"{PORT_RANGE[0]}..{PORT_RANGE[1]}",
            "--response-address", gateway.response_address, "--public-key", gateway.public_key,
            "--transport-encryption", "{transport_encryption}",
            "--spark-context-initialization-mode", "none", "--kernel-class-name", "ipykernel.ipkernel.IPythonKernel",
            "--ip", "127.0.0.1"]


def client_for(info: dict[str, object]) -> BlockingKernelClient:
    kc = BlockingKernelClient()
    kc.load_connection_info(info)
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc


def started(kc: BlockingKernelClient, msg_id: str) -> bool:
    """Whether the kernel has begun running ``msg_id`` (its execute_input is on iopub)."""
    try:
        msg = kc.get_iopub_msg(timeout=0.2)
    except Empty:
        return False
    return msg["msg_type"] == "execute_input" and msg["parent_header"].get("msg_id") == msg_id


def test_gateway_launch_runs_code_survives_a_segfault_and_shuts_down(
        gateway: FakeGateway, launches: list[Launch], tmp_path: Path) -> None:
    kernel_id = "7c1d3f0a-aaaa-4bbb-8ccc-123456789abc"
    launch = start_launcher(str(tmp_path / "launch.log"), *launch_args(gateway, kernel_id),
                            "--Supervisor.interrupt_grace=20")
    launches.append(launch)
    info = gateway.receive(timeout=30)

    # what the gateway's provisioner reads from the answer
    assert info["kernel_id"] == kernel_id
    assert info["pid"] == launch.proc.pid
    ports = [info[name] for name in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port",
                                     "comm_port")]
    assert len(set(ports)) == 6
    assert all(PORT_RANGE[0] <= p <= PORT_RANGE[1] for p in ports), ports
    assert info["key"] and info["signature_scheme"] == "hmac-sha256"

    kc = client_for(info)
    try:
        launch.remember_tree()
        _, iopub = execute_ok(kc, "print(6 * 7)")
        assert stream_text(iopub) == "42\n"

        reply, _ = execute(kc, "import ctypes; ctypes.string_at(0)", timeout=60)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "WorkerDied", reply["content"]
        _, iopub = execute_ok(kc, "print('still here')", timeout=60)
        assert stream_text(iopub) == "still here\n"
        launch.remember_tree()

        # the gateway's poll, then an interrupt, both through the listener
        send_listener_request(info["comm_port"], {"signum": 0})
        msg_id = kc.execute("import time; time.sleep(60)")
        wait_for(lambda: started(kc, msg_id), timeout=30, what="the cell to start")
        send_listener_request(info["comm_port"], {"signum": 2})
        reply = get_reply(kc, msg_id, timeout=30)
        assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
        execute_ok(kc, "pass")
        launch.remember_tree()
    finally:
        kc.stop_channels()

    send_listener_request(info["comm_port"], {"shutdown": 1})
    assert launch.exit_code(timeout=30) == 0, launch.output()[-3000:]
    assert len(launch.seen) >= 3  # launcher, supervisor, workers
    wait_for(lambda: not launch.survivors(), timeout=15, what="every process of the launch to end")


def test_a_container_entry_launches_from_the_environment_and_ends_with_the_kernel(
        gateway: FakeGateway, launches: list[Launch], tmp_path: Path) -> None:
    """The image's entry has no arguments: it reads what the gateway's container launchers set
    (deploy/kernel-image/Dockerfile).  A shutdown_request from the gateway's client stops the
    supervisor; the launcher then exits and its listener closes, which is how the gateway's poll
    sees the kernel gone."""
    env = {"KERNEL_ID": "c0ffee00-0000-4000-8000-000000000001", "PORT_RANGE": "0..0",
           "RESPONSE_ADDRESS": gateway.response_address, "PUBLIC_KEY": gateway.public_key,
           "KERNEL_SPARK_CONTEXT_INIT_MODE": "none", "RELAYKERNEL_ARGS": "--Supervisor.standby_workers=0"}
    launch = start_launcher(str(tmp_path / "launch.log"), "--ip", "127.0.0.1", env=env)
    launches.append(launch)
    info = gateway.receive(timeout=30)
    assert info["kernel_id"] == env["KERNEL_ID"]
    kc = client_for(info)
    try:
        launch.remember_tree()
        supervisor = psutil.Process(launch.proc.pid).children()[0]
        assert supervisor.cmdline()[-1] == "--Supervisor.standby_workers=0"
        kc.shutdown()
    finally:
        kc.stop_channels()
    assert launch.exit_code(timeout=30) == 0, launch.output()[-3000:]
    with pytest.raises(ConnectionRefusedError):
        send_listener_request(info["comm_port"], {"signum": 0})
    wait_for(lambda: not launch.survivors(), timeout=15, what="every process of the launch to end")


def test_enterprise_gateway_spelling(gateway: FakeGateway, launches: list[Launch], tmp_path: Path) -> None:
    """Enterprise Gateway's kernelspecs pass the same arguments as --RemoteProcessProxy.kernel-id etc."""
    args = [a.replace("--", "--RemoteProcessProxy.", 1) if a.startswith("--") and a != "--ip" else a
            for a in launch_args(gateway, "e9000000-0000-4000-8000-00000000000e")]
    launch = start_launcher(str(tmp_path / "launch.log"), *args)
    launches.append(launch)
    info = gateway.receive(timeout=30)
    assert info["kernel_id"] == "e9000000-0000-4000-8000-00000000000e"
    assert PORT_RANGE[0] <= info["shell_port"] <= PORT_RANGE[1]
    launch.remember_tree()
    send_listener_request(info["comm_port"], {"shutdown": 1})
    assert launch.exit_code(timeout=30) == 0, launch.output()[-3000:]
    wait_for(lambda: not launch.survivors(), timeout=15, what="every process of the launch to end")


def test_transport_encryption_gives_the_kernel_curve_keys(
        gateway: FakeGateway, launches: list[Launch], tmp_path: Path) -> None:
    """--transport-encryption required (the gateway's transport_encryption policy): the connection info
    carries CurveZMQ keys, the kernel encrypts its sockets with them, and a client holding them talks to it."""
    args = launch_args(gateway)
    args[args.index("--transport-encryption") + 1] = "required"
    launch = start_launcher(str(tmp_path / "launch.log"), *args)
    launches.append(launch)
    info = gateway.receive(timeout=30)
    assert len(info["curve_publickey"]) == 40 and len(info["curve_secretkey"]) == 40
    kc = client_for(info)
    try:
        launch.remember_tree()
        _, iopub = execute_ok(kc, "print('sealed')")
        assert stream_text(iopub) == "sealed\n"
    finally:
        kc.stop_channels()
    plain = BlockingKernelClient()
    plain.load_connection_info({k: v for k, v in info.items() if not k.startswith("curve_")})
    plain.start_channels()
    try:
        plain.kernel_info()
        with pytest.raises(Empty):  # no CURVE handshake, no connection: the request never arrives
            plain.get_shell_msg(timeout=3)
    finally:
        plain.stop_channels()
    send_listener_request(info["comm_port"], {"shutdown": 1})
    assert launch.exit_code(timeout=30) == 0, launch.output()[-3000:]
    wait_for(lambda: not launch.survivors(), timeout=15, what="every process of the launch to end")


@pytest.mark.parametrize("key", ["not-base64!", "QUJDREVGRw==", "private"])
def test_a_wrong_public_key_starts_nothing(gateway: FakeGateway, launches: list[Launch], tmp_path: Path,
                                           key: str) -> None:
    if key == "private":
        der = gateway.private_key.export_key("DER")
        key = __import__("base64").b64encode(der).decode()
    args = launch_args(gateway)
    args[args.index("--public-key") + 1] = key
    launch = start_launcher(str(tmp_path / "launch.log"), *args)
    launches.append(launch)
    assert launch.exit_code(timeout=30) == 2
    out = launch.output()
    assert "relaykernel.launch: error: --public-key" in out, out
    assert "starting the kernel" not in out, out
    assert not launch.survivors()


def test_an_unreachable_response_address_stops_the_kernel(
        gateway: FakeGateway, launches: list[Launch], tmp_path: Path) -> None:
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        args = launch_args(gateway)
        args[args.index("--response-address") + 1] = address
        launch = start_launcher(str(tmp_path / "launch.log"), *args, "--response-timeout", "2")
        launches.append(launch)
        assert launch.exit_code(timeout=40) == 1
    out = launch.output()
    assert f"relaykernel.launch: error: cannot send the connection info to the response address {address}" \
        in out, out
    assert "starting the kernel" in out  # it had started, and was stopped
    wait_for(lambda: not launch.survivors(), timeout=15, what="the kernel to be gone")


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--response-address", "no-port-here", "--response-address 'no-port-here': expected HOST:PORT"),
    ("--port-range", "40000..40003", "fewer ports than the kernel's six"),
    ("--kernel-id", "{kernel_id}", "no --kernel-id"),
])
def test_unusable_arguments_start_nothing(gateway: FakeGateway, launches: list[Launch], tmp_path: Path,
                                          option: str, value: str, message: str) -> None:
    args = launch_args(gateway)
    args[args.index(option) + 1] = value
    launch = start_launcher(str(tmp_path / "launch.log"), *args)
    launches.append(launch)
    assert launch.exit_code(timeout=30) == 2
    out = launch.output()
    assert message in out, out
    assert not launch.survivors()
