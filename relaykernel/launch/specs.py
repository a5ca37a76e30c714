"""``python -m relaykernel.launch.specs``: kernelspecs that run relaykernel through a gateway.

One spec per gateway_provisioners 0.5 provisioner, in the shape of the specs its own
``jupyter-*-spec`` installers write (``metadata.kernel_provisioner`` with
``provisioner_name`` and ``config``; argv with the ``{placeholders}`` the gateway fills):

- ``distributed`` (DistributedProvisioner, SSH): argv runs ``python -m relaykernel.launch``
  on the remote host.  The provisioner joins argv with spaces into a shell command line,
  unquoted, so no argument may hold a space: that is why argv names the module with
  ``-m`` rather than relaykernel's ``-c`` bootstrap (kernelspec.py).
- ``kubernetes`` / ``docker`` (KubernetesProvisioner, DockerProvisioner and
  DockerSwarmProvisioner): argv runs the gateway's own container launcher,
  ``scripts/launch_kubernetes.py`` or ``scripts/launch_docker.py``, copied from the
  installed gateway_provisioners into the spec (it must live there: it names the kernel
  after the spec's directory).  It starts the image (deploy/kernel-image/Dockerfile)
  with KERNEL_ID, RESPONSE_ADDRESS, PUBLIC_KEY, PORT_RANGE set, and the image's entry
  ``python -m relaykernel.launch`` reads them.  Supervisor options travel in the
  spec's env as RELAYKERNEL_ARGS, which those launchers copy into the container.

``--gateway enterprise-gateway`` writes the ``distributed`` spec for Enterprise Gateway 3.x
instead: EG runs on jupyter_client 6, which has no provisioners, and reads
``metadata.process_proxy`` (its DistributedProcessProxy, ``remote_hosts`` one comma-separated
string); argv carries EG's ``--RemoteProcessProxy.*`` spelling and no
``{transport_encryption}``, a placeholder EG does not fill.

``--inplace-restart`` (distributed only): restarts swap the supervisor's worker, so comms and
widgets survive them.  The spec's env tells the supervisor (RELAYKERNEL_INPLACE_RESTART), and
it names relaykernel's subclass of the provisioner (gp_provisioner.py, the provisioner
``relaykernel-distributed-provisioner``) or of EG's process proxy (eg_proxy.py, which needs
relaykernel installed in EG's environment, ``pip install --no-deps relaykernel``).

Runs where the gateway runs; imports nothing of relaykernel's kernel.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import sys
from typing import Any

from .process import ARGS_ENV  # where the image's launcher finds the supervisor options

#: The launcher protocol's arguments, as gateway_provisioners' own kernelspecs pass them.
GATEWAY_ARGS = ["--kernel-id", "{kernel_id}", "--port-range", "{port_range}",
                "--response-address", "{response_address}", "--public-key", "{public_key}",
                "--transport-encryption", "{transport_encryption}"]

PROVISIONERS = {
    "distributed": "distributed-provisioner",
    "kubernetes": "kubernetes-provisioner",
    "docker": "docker-provisioner",
    "docker-swarm": "docker-swarm-provisioner",
}

#: Enterprise Gateway 3.x fills these four placeholders only (RemoteKernelManager.format_kernel_cmd).
EG_ARGS = ["--RemoteProcessProxy.kernel-id", "{kernel_id}", "--RemoteProcessProxy.port-range", "{port_range}",
           "--RemoteProcessProxy.response-address", "{response_address}",
           "--RemoteProcessProxy.public-key", "{public_key}"]

#: The process proxy Enterprise Gateway runs a distributed (SSH) kernel with; and relaykernel's
#: subclass of it, whose restarts keep the supervisor (eg_proxy.py).
EG_DISTRIBUTED = "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy"
EG_INPLACE = "relaykernel.launch.eg_proxy.RelayDistributedProcessProxy"
#: What tells the supervisor to swap its worker on shutdown_request(restart) (supervisor/app.py).
INPLACE_ENV = "RELAYKERNEL_INPLACE_RESTART"

#: relaykernel's DistributedProvisioner, whose restarts keep the supervisor (gp_provisioner.py).
GP_INPLACE = "relaykernel-distributed-provisioner"

GATEWAYS = ("gateway_provisioners", "enterprise-gateway")

#: The gateway's container launcher per provisioner (kernel-launchers/<dir>/scripts/<script>).
CONTAINER_LAUNCHERS = {"kubernetes": ("kubernetes", "launch_kubernetes.py"),
                       "docker": ("docker", "launch_docker.py"),
                       "docker-swarm": ("docker", "launch_docker.py")}


def kernel_spec(provisioner: str, *, display_name: str, install_dir: str, python: str = "python",
                kernel_args: list[str] | None = None, remote_hosts: list[str] | None = None,
                image: str | None = None, launch_timeout: int | None = None,
                gateway: str = "gateway_provisioners", inplace_restart: bool = False) -> dict[str, Any]:
    """The kernel.json for ``provisioner`` (a key of PROVISIONERS) on ``gateway`` (one of GATEWAYS)."""
    kernel_args = kernel_args or []
    if gateway == "enterprise-gateway":
        if launch_timeout:
            raise ValueError("Enterprise Gateway takes its launch timeout from EG_KERNEL_LAUNCH_TIMEOUT, not the spec")
        return _enterprise_gateway_spec(provisioner, display_name=display_name, python=python,
                                        kernel_args=kernel_args, remote_hosts=remote_hosts,
                                        inplace_restart=inplace_restart)
    if inplace_restart and provisioner != "distributed":
        raise ValueError("--inplace-restart is for the distributed spec: a restarted pod or container is new")
    config: dict[str, Any] = {}
    env: dict[str, str] = {INPLACE_ENV: "1"} if inplace_restart else {}
    if provisioner == "distributed":
        if any(" " in a or not a for a in kernel_args):
            raise ValueError("DistributedProvisioner runs argv as an unquoted shell line: no spaces in arguments")
        argv = [python, "-m", "relaykernel.launch", *GATEWAY_ARGS, *kernel_args]
        if remote_hosts:
            config["remote_hosts"] = remote_hosts
    else:
        if not image:
            raise ValueError(f"the {provisioner} provisioner needs --image (the kernel image to run)")
        # an absolute path: remote provisioners substitute their own placeholders in argv, not {resource_dir}
        argv = [python, os.path.join(install_dir, "scripts", CONTAINER_LAUNCHERS[provisioner][1]), *GATEWAY_ARGS,
                "--spark-context-initialization-mode", "none"]
        config["image_name"] = image
        if kernel_args:
            env[ARGS_ENV] = shlex.join(kernel_args)
    if launch_timeout:
        config["launch_timeout"] = launch_timeout
    return {
        "argv": argv,
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",  # the provisioner sends it through the launcher's listener
        "env": env,
        "metadata": {
            # the launcher gives the kernel CurveZMQ keys when the gateway's transport_encryption asks
            "supported_encryption": ["curve"],
            "debugger": True,
            "kernel_provisioner": {"provisioner_name": GP_INPLACE if inplace_restart else PROVISIONERS[provisioner],
                                   "config": config},
        },
    }


def _enterprise_gateway_spec(provisioner: str, *, display_name: str, python: str, kernel_args: list[str],
                             remote_hosts: list[str] | None, inplace_restart: bool) -> dict[str, Any]:
    if provisioner != "distributed":
        raise ValueError("for Enterprise Gateway only the distributed spec is generated (its container "
                         "process proxies need EG's own launch scripts, which its package does not ship)")
    if any(" " in a or not a for a in kernel_args):
        raise ValueError("DistributedProcessProxy runs argv as an unquoted shell line: no spaces in arguments")
    config = {"remote_hosts": ",".join(remote_hosts)} if remote_hosts else {}
    return {
        "argv": [python, "-m", "relaykernel.launch", *EG_ARGS, *kernel_args],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",  # EG sends it through the launcher's listener
        "env": {INPLACE_ENV: "1"} if inplace_restart else {},
        "metadata": {"debugger": True, "process_proxy": {
            "class_name": EG_INPLACE if inplace_restart else EG_DISTRIBUTED, "config": config}},
    }


def gateway_launchers_dir() -> str | None:
    """gateway_provisioners' kernel-launchers directory, if it is installed here (not imported)."""
    spec = importlib.util.find_spec("gateway_provisioners")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "kernel-launchers")
    return path if os.path.isdir(path) else None


def write_spec(out: str, spec: dict[str, Any], provisioner: str, launchers: str | None) -> list[str]:
    """Write ``out``/kernel.json (and the container launcher's scripts); return the files written."""
    os.makedirs(out, exist_ok=True)
    written = []
    if provisioner in CONTAINER_LAUNCHERS:
        if launchers is None:
            raise ValueError("the container launchers come from gateway_provisioners: install it here "
                             "(pip install 'gateway_provisioners[k8s]' or '[docker]') or pass --gateway-launchers")
        src = os.path.join(launchers, CONTAINER_LAUNCHERS[provisioner][0], "scripts")
        if not os.path.isfile(os.path.join(src, CONTAINER_LAUNCHERS[provisioner][1])):
            raise ValueError(f"no {CONTAINER_LAUNCHERS[provisioner][1]} in {src}")
        dst = os.path.join(out, "scripts")
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        written += [os.path.join(dst, name) for name in sorted(os.listdir(dst))]
    path = os.path.join(out, "kernel.json")
    with open(path, "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    return [path, *written]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m relaykernel.launch.specs",
        description="Write a kernelspec that runs relaykernel through gateway_provisioners / Enterprise Gateway. "
                    "Arguments after -- go to the kernel (e.g. -- --Supervisor.memory_limit=4).")
    p.add_argument("--provisioner", required=True, choices=sorted(PROVISIONERS))
    p.add_argument("--gateway", choices=GATEWAYS, default=GATEWAYS[0],
                   help="the spec's reader: jupyter_server with gateway_provisioners 0.5, or Enterprise "
                        "Gateway 3.x (distributed only) (default: %(default)s)")
    p.add_argument("--inplace-restart", action="store_true",
                   help="distributed: restarts swap the worker and keep comms and widgets, through relaykernel's "
                        "own provisioner or process proxy (relaykernel installed where the gateway runs; "
                        "for EG: pip install --no-deps relaykernel into its environment)")
    p.add_argument("--out", required=True, help="the kernelspec directory to write (its name is the kernel's)")
    p.add_argument("--install-dir", help="kubernetes/docker: where the spec will be installed, as the gateway "
                                         "sees it (default: --out)")
    p.add_argument("--display-name", help="name shown in frontends")
    p.add_argument("--python", default="python", help="the interpreter, on the remote host or in the gateway "
                                                      "(default: %(default)s)")
    p.add_argument("--remote-hosts", help="distributed: comma-separated hosts (default: the gateway's "
                                          "GP_REMOTE_HOSTS, or EG_REMOTE_HOSTS)")
    p.add_argument("--image", help="kubernetes/docker: the kernel image (deploy/kernel-image/Dockerfile)")
    p.add_argument("--launch-timeout", type=int, help="seconds the gateway waits for the connection info")
    p.add_argument("--gateway-launchers", help="gateway_provisioners' kernel-launchers directory "
                                               "(default: the installed package's)")
    own, kernel_args = (argv if argv is not None else sys.argv[1:]), []
    if "--" in own:
        cut = own.index("--")
        own, kernel_args = own[:cut], own[cut + 1:]
    args = p.parse_args(own)
    name = args.display_name or f"Python 3 (relaykernel, {args.provisioner})"
    try:
        install_dir = os.path.abspath(args.install_dir or args.out)
        spec = kernel_spec(args.provisioner, display_name=name, install_dir=install_dir, python=args.python,
                           kernel_args=kernel_args,
                           remote_hosts=args.remote_hosts.split(",") if args.remote_hosts else None,
                           image=args.image, launch_timeout=args.launch_timeout, gateway=args.gateway,
                           inplace_restart=args.inplace_restart)
        files = write_spec(args.out, spec, args.provisioner, args.gateway_launchers or gateway_launchers_dir())
    except ValueError as exc:
        print(f"relaykernel.launch.specs: error: {exc}", file=sys.stderr)
        return 2
    for path in files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
