"""What can be checked here of the Kubernetes and Docker deployments (no cluster, no Docker daemon).

The specs come from ``python -m relaykernel.launch.specs`` (never hand-copied): each must
name its gateway_provisioners provisioner, run the gateway's own container launcher from the
spec's directory with every placeholder the gateway fills, and carry the kernel's options to
the image.  The image's entry must be relaykernel's launcher, which starts from the
environment the gateway's container launchers set.  (The DistributedProvisioner spec is run for
real in test_distributed.py.)
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from relaykernel.launch.process import build_parser

REPO = Path(__file__).resolve().parents[2]

#: What gateway_provisioners' RemoteProvisionerBase.pre_launch substitutes in argv.
GATEWAY_FILLS = {"kernel_id", "port_range", "response_address", "public_key", "transport_encryption"}


def generate(out: Path, *args: str) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-m", "relaykernel.launch.specs", "--out", str(out), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    spec: dict[str, object] = json.loads((out / "kernel.json").read_text())
    return spec


def placeholders(argv: list[str]) -> set[str]:
    return {m for arg in argv for m in re.findall(r"{([A-Za-z0-9_]+)}", arg)}


@pytest.mark.parametrize(("provisioner", "provisioner_name", "script"), [
    ("kubernetes", "kubernetes-provisioner", "launch_kubernetes.py"),
    ("docker", "docker-provisioner", "launch_docker.py"),
    ("docker-swarm", "docker-swarm-provisioner", "launch_docker.py"),
])
def test_container_specs_run_the_gateways_launcher_with_the_relaykernel_image(
        tmp_path: Path, provisioner: str, provisioner_name: str, script: str) -> None:
    out = tmp_path / f"relaykernel_{provisioner}"
    spec = generate(out, "--provisioner", provisioner, "--image", "example.org/relaykernel:0.1",
                    "--", "--Supervisor.memory_limit=3.5", "--Supervisor.standby_workers=2")
    argv = spec["argv"]
    assert isinstance(argv, list)
    assert argv[1] == str(out / "scripts" / script)  # absolute: the gateway fills no {resource_dir}
    assert (out / "scripts" / script).is_file()
    assert placeholders(argv) == GATEWAY_FILLS
    assert spec["metadata"]["supported_encryption"] == ["curve"]  # type: ignore[index]
    provisioner_stanza = spec["metadata"]["kernel_provisioner"]  # type: ignore[index]
    assert provisioner_stanza == {"provisioner_name": provisioner_name,
                                  "config": {"image_name": "example.org/relaykernel:0.1"}}
    # the container launchers copy their environment into the container, where the entry reads it
    env = spec["env"]
    assert env == {"RELAYKERNEL_ARGS": "--Supervisor.memory_limit=3.5 --Supervisor.standby_workers=2"}


def test_the_distributed_spec_runs_the_launcher_with_the_gateways_arguments(tmp_path: Path) -> None:
    spec = generate(tmp_path / "ssh", "--provisioner", "distributed", "--remote-hosts", "node1,node2",
                    "--python", "/opt/conda/bin/python", "--", "--Supervisor.memory_limit=3.5")
    argv = spec["argv"]
    assert isinstance(argv, list)
    assert argv[:3] == ["/opt/conda/bin/python", "-m", "relaykernel.launch"]
    assert placeholders(argv) == GATEWAY_FILLS
    assert spec["metadata"]["kernel_provisioner"] == {  # type: ignore[index]
        "provisioner_name": "distributed-provisioner", "config": {"remote_hosts": ["node1", "node2"]}}
    # as the provisioner runs it over SSH: filled, joined with spaces, split by the remote shell;
    # an unfilled transport encryption arrives as nothing at all
    filled = {"kernel_id": "k-1", "port_range": "0..0", "response_address": "10.0.0.1:8877",
              "public_key": "QUJD", "transport_encryption": ""}
    line = " ".join(re.sub(r"{(\w+)}", lambda m: filled[m.group(1)], a) for a in argv[3:])
    args, kernel_args = build_parser().parse_known_args(shlex.split(line))
    assert (args.kernel_id, args.response_address, args.public_key) == ("k-1", "10.0.0.1:8877", "QUJD")
    assert args.transport_encryption is None
    assert kernel_args == ["--Supervisor.memory_limit=3.5"]


def test_a_container_spec_without_an_image_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "relaykernel.launch.specs", "--provisioner", "kubernetes",
                             "--out", str(tmp_path / "k8s")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs --image" in result.stderr
    assert not (tmp_path / "k8s" / "kernel.json").exists()


def test_the_kernel_image_entry_is_the_launcher() -> None:
    dockerfile = (REPO / "deploy" / "kernel-image" / "Dockerfile").read_text()
    entries = [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT")]
    assert len(entries) == 1
    entry = json.loads(entries[0].removeprefix("ENTRYPOINT"))
    assert entry[entry.index("python"):] == ["python", "-m", "relaykernel.launch"]
    assert not [line for line in dockerfile.splitlines() if line.startswith("CMD")]  # no arguments: the env
    assert re.search(r'pip install .*"/src\[gateway\]"', dockerfile)


def test_the_enterprise_gateway_spec_names_its_process_proxy_and_its_placeholders(tmp_path: Path) -> None:
    spec = generate(tmp_path / "eg", "--gateway", "enterprise-gateway", "--provisioner", "distributed",
                    "--remote-hosts", "node1,node2", "--python", "/opt/conda/bin/python",
                    "--", "--Supervisor.memory_limit=3.5")
    argv = spec["argv"]
    assert isinstance(argv, list)
    assert argv[:3] == ["/opt/conda/bin/python", "-m", "relaykernel.launch"]
    # EG 3.3's RemoteKernelManager.format_kernel_cmd fills these four, and no {transport_encryption}
    assert placeholders(argv) == GATEWAY_FILLS - {"transport_encryption"}
    assert spec["metadata"] == {"debugger": True, "process_proxy": {
        "class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy",
        "config": {"remote_hosts": "node1,node2"}}}  # one string: EG splits it on commas
    filled = {"kernel_id": "k-1", "port_range": "0..0", "response_address": "10.0.0.1:8877", "public_key": "QUJD"}
    line = " ".join(re.sub(r"{(\w+)}", lambda m: filled[m.group(1)], a) for a in argv[3:])
    args, kernel_args = build_parser().parse_known_args(shlex.split(line))
    assert (args.kernel_id, args.port_range, args.response_address, args.public_key) == (
        "k-1", "0..0", "10.0.0.1:8877", "QUJD")
    assert kernel_args == ["--Supervisor.memory_limit=3.5"]


def test_enterprise_gateway_specs_are_distributed_only(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "relaykernel.launch.specs", "--gateway", "enterprise-gateway",
                             "--provisioner", "kubernetes", "--image", "example.org/relaykernel:0.1",
                             "--out", str(tmp_path / "k8s")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "only the distributed spec" in result.stderr
    assert not (tmp_path / "k8s").exists()


def test_the_inplace_enterprise_gateway_spec_names_relaykernels_proxy_and_tells_the_supervisor(
        tmp_path: Path) -> None:
    spec = generate(tmp_path / "eg", "--gateway", "enterprise-gateway", "--inplace-restart",
                    "--provisioner", "distributed")
    proxy = spec["metadata"]["process_proxy"]  # type: ignore[index]
    assert proxy == {"class_name": "relaykernel.launch.eg_proxy.RelayDistributedProcessProxy", "config": {}}
    assert spec["env"] == {"RELAYKERNEL_INPLACE_RESTART": "1"}  # read by supervisor/app.py


def test_the_inplace_distributed_spec_names_relaykernels_provisioner_and_tells_the_supervisor(
        tmp_path: Path) -> None:
    spec = generate(tmp_path / "gp", "--inplace-restart", "--provisioner", "distributed", "--remote-hosts", "n1")
    assert spec["metadata"]["kernel_provisioner"] == {  # type: ignore[index]
        "provisioner_name": "relaykernel-distributed-provisioner", "config": {"remote_hosts": ["n1"]}}
    assert spec["env"] == {"RELAYKERNEL_INPLACE_RESTART": "1"}
    provisioners = entry_points(group="jupyter_client.kernel_provisioners")  # pyproject.toml's
    assert provisioners["relaykernel-distributed-provisioner"].value == (
        "relaykernel.launch.gp_provisioner:RelayDistributedProvisioner")
    result = subprocess.run([sys.executable, "-m", "relaykernel.launch.specs", "--inplace-restart",
                             "--provisioner", "kubernetes", "--image", "example.org/relaykernel:0.1",
                             "--out", str(tmp_path / "k8s")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--inplace-restart is for the distributed spec" in result.stderr
