"""``python -m relaykernel install``: write the relaykernel kernelspec.

The spec launches this interpreter's relaykernel whatever the working
directory, interrupts by signal (the supervisor forwards SIGINT to the worker
and survives it) and names the relaykernel provisioner so that a
jupyter_client restart swaps the worker instead of killing the supervisor and
its comm registry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

KERNEL_NAME = "relaykernel"

#: How the kernelspec starts relaykernel: like ``python -m relaykernel``, but with
#: the working directory (``''``) off ``sys.path`` before anything is imported, so
#: a folder named relaykernel there (a clone of the project) cannot shadow the
#: installed package.  (``python -P`` would do it on Python >= 3.11 only, and would
#: keep ``''`` off the worker's path too, where user code expects it.)
BOOTSTRAP = ("import sys; sys.path[:1] == [''] and sys.path.pop(0); "
             "from relaykernel.__main__ import main; main()")


def kernel_spec(display_name: str = "Python 3 (relaykernel)") -> dict[str, Any]:
    return {
        "argv": [sys.executable, "-c", BOOTSTRAP, "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "debugger": True,  # JupyterLab enables its debugger by this (worker/debugger.py)
            # KernelManager(transport_encryption='auto' | 'required') provisions
            # CurveZMQ keys for kernels that say they support them
            "supported_encryption": ["curve"],
            "kernel_provisioner": {"provisioner_name": "relaykernel-provisioner", "config": {}},
        },
    }


def install(name: str = KERNEL_NAME, display_name: str | None = None, user: bool = False,
            prefix: str | None = None) -> str:
    """Install the kernelspec and return the directory it was written to."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "kernel.json"), "w") as f:
            json.dump(kernel_spec(display_name or "Python 3 (relaykernel)"), f, indent=1)
        return KernelSpecManager().install_kernel_spec(tmp, name, user=user, prefix=prefix)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m relaykernel install",
                                     description="Install the relaykernel kernelspec.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help=f"install into sys.prefix ({sys.prefix})")
    where.add_argument("--prefix", help="install into this prefix (PREFIX/share/jupyter/kernels)")
    parser.add_argument("--name", default=KERNEL_NAME, help="kernelspec name (default: %(default)s)")
    parser.add_argument("--display-name", help="name shown in frontends")
    args = parser.parse_args(argv)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install(args.name, args.display_name, user=args.user, prefix=prefix)
    print(f"Installed kernelspec {args.name} in {path}")
