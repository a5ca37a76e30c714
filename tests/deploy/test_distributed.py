"""The generated DistributedProvisioner kernelspec, run by gateway_provisioners itself.

A jupyter_client KernelManager (as jupyter_server and Enterprise Gateway hold one per
kernel) starts the spec written by ``python -m relaykernel.launch.specs --provisioner
distributed`` with ``remote_hosts`` = localhost.  DistributedProvisioner starts the launcher
locally without SSH in that case (SSH is the one part this does not run), and all the rest
is the gateway's own code: its ResponseManager decrypts the launcher's answer, its
provisioner interrupts and polls through the launcher's listener and shuts it down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.deploy.gateway import exercise_remote_kernel
from tests.kernel.helpers import (
    KernelHandle,
    relaykernel_only,
    start_kernel,
    stop_kernel,
)

pytestmark = relaykernel_only

SPEC_NAME = "relaykernel_distributed"


@pytest.fixture
def distributed_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, object]]:
    monkeypatch.setenv("GP_KERNEL_LOG_DIR", str(tmp_path))  # the launcher's output, instead of /tmp
    # the gateway's response address: on loopback, on a port of its choosing near 30877
    monkeypatch.setenv("GP_RESPONSE_IP", "127.0.0.1")
    monkeypatch.setenv("GP_RESPONSE_PORT", "30877")
    out = Path(os.environ["JUPYTER_PATH"].split(os.pathsep)[0]) / "kernels" / SPEC_NAME
    result = subprocess.run([sys.executable, "-m", "relaykernel.launch.specs", "--provisioner", "distributed",
                             "--out", str(out), "--python", sys.executable, "--remote-hosts", "localhost",
                             "--", "--Supervisor.interrupt_grace=20"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    yield json.loads((out / "kernel.json").read_text())
    for path in sorted(out.iterdir()):
        path.unlink()
    out.rmdir()


@pytest.mark.parametrize("encryption", [None, "required"])
def test_distributed_provisioner_runs_relaykernel_through_the_launcher(
        distributed_spec: dict[str, object], encryption: str | None) -> None:
    """``encryption``: KernelManager.transport_encryption, which the provisioner passes to the launcher."""
    options = {"transport_encryption": encryption} if encryption else {}
    # the gateway refuses to start kernels for root (its unauthorized_users), and tests may run as root
    handle: KernelHandle = start_kernel(SPEC_NAME, ready_timeout=60, env={"KERNEL_USERNAME": "relay-test"},
                                        **options)
    tree: list[psutil.Process] = []
    try:
        provisioner = handle.km.provisioner
        assert type(provisioner).__name__ == "DistributedProvisioner"
        assert provisioner.comm_port > 0  # the launcher's listener, from the decrypted answer
        assert (handle.km.curve_publickey is not None) == bool(encryption)
        launcher = psutil.Process(handle.pid)
        assert "relaykernel.launch" in launcher.cmdline()
        exercise_remote_kernel(handle.kc, handle.km, also_ready=handle.km.is_alive)
        tree = [launcher, *launcher.children(recursive=True)]
        assert len(tree) >= 3
    finally:
        killed = stop_kernel(handle, wait=30)
    assert killed == []  # the gateway's shutdown ended every process itself
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

