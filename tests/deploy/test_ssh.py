"""DistributedProvisioner over real SSH: the generated spec, an OpenSSH server on this machine.

The test starts its own sshd (Debian's openssh-server, deploy/apt-packages.txt) with its own
host key, on a free port of 127.0.0.2: an address on the loopback that jupyter_client does not
count as local, so gateway_provisioners' DistributedProvisioner takes its SSH path (paramiko,
host key checked against a known_hosts file, key login) and runs the launcher through the
remote shell with nohup, as on a cluster node.  Everything the gateway and the client do is
the same as in test_distributed.py.  HOME points at a temporary directory holding the test's
SSH client key and known_hosts; as root, sshd needs /run/sshd, which the test creates if it is
missing (as Debian's ssh service does).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.deploy.gateway import exercise_remote_kernel
from tests.kernel.helpers import (
    relaykernel_only,
    start_kernel,
    stop_kernel,
    wait_for,
)

pytestmark = relaykernel_only

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
HOST = "127.0.0.2"
SPEC_NAME = "relaykernel_ssh"
#: What the kernel on the "remote" host needs of the test session's isolation (sshd gives it a clean env).
ISOLATION = ("JUPYTER_PATH", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An sshd on HOST:port for the current user; yields (port, home with .ssh set up)."""
    assert os.path.exists(SSHD), "needs openssh-server (deploy/apt-packages.txt; .ci/run installs it)"
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    etc, home = tmp_path / "sshd", tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    etc.mkdir()
    for key in (etc / "host_key", home / ".ssh" / "id_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    shutil.copy(home / ".ssh" / "id_ed25519.pub", etc / "authorized_keys")
    port = free_port(HOST)
    host_pub = (etc / "host_key.pub").read_text().split()[:2]
    (home / ".ssh" / "known_hosts").write_text(f"[{HOST}]:{port} {' '.join(host_pub)}\n")
    (etc / "sshd_config").write_text(
        f"Port {port}\nListenAddress {HOST}\nHostKey {etc / 'host_key'}\n"
        f"AuthorizedKeysFile {etc / 'authorized_keys'}\nPidFile {etc / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\n")
    with open(etc / "sshd.log", "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(etc / "sshd_config")], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or accepts(HOST, port), timeout=30, what="sshd to listen")
        assert proc.poll() is None, (etc / "sshd.log").read_text()
        yield port, home
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def ssh_spec(sshd: tuple[int, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    port, home = sshd
    monkeypatch.setenv("GP_RESPONSE_IP", "127.0.0.1")  # read when gateway_provisioners is first imported
    monkeypatch.setenv("GP_RESPONSE_PORT", "30877")
    from gateway_provisioners import distributed

    monkeypatch.setattr(distributed, "ssh_port", port)  # read from GP_SSH_PORT when first imported
    monkeypatch.setattr(distributed, "kernel_log_dir", str(tmp_path))  # the launcher's log
    monkeypatch.setenv("HOME", str(home))  # paramiko's key and known_hosts
    monkeypatch.delenv("GP_REMOTE_PWD", raising=False)
    out = write_ssh_spec()
    yield
    shutil.rmtree(out)


def write_ssh_spec(name: str = SPEC_NAME, *args: str) -> Path:
    """The generated spec (``args`` to the generator), in the test session's JUPYTER_PATH, plus the
    session's isolation in its env."""
    out = Path(os.environ["JUPYTER_PATH"].split(os.pathsep)[0]) / "kernels" / name
    result = subprocess.run([sys.executable, "-m", "relaykernel.launch.specs", "--provisioner", "distributed",
                             "--out", str(out), "--python", sys.executable, "--remote-hosts", HOST, *args,
                             "--", "--Supervisor.interrupt_grace=20"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    spec = json.loads((out / "kernel.json").read_text())
    spec["env"] = {**spec["env"], **{var: os.environ[var] for var in ISOLATION if var in os.environ}}
    (out / "kernel.json").write_text(json.dumps(spec))
    return out


def test_distributed_provisioner_over_ssh(ssh_spec: None, tmp_path: Path) -> None:
    handle = start_kernel(SPEC_NAME, ready_timeout=90, env={"KERNEL_USERNAME": "relay-test"})
    tree: list[psutil.Process] = []
    try:
        provisioner = handle.km.provisioner
        assert provisioner.local_proc is None, "started without SSH"
        assert provisioner.assigned_ip == HOST
        launcher = psutil.Process(handle.pid)  # the pid the remote shell echoed
        assert "relaykernel.launch" in launcher.cmdline()
        exercise_remote_kernel(handle.kc, handle.km)
        tree = [launcher, *launcher.children(recursive=True)]
        assert len(tree) >= 3
    finally:
        killed = stop_kernel(handle, wait=30)
    assert killed == []
    assert "Accepted publickey" in (tmp_path / "sshd" / "sshd.log").read_text()
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

