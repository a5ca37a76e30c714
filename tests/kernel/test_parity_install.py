"""The installed kernelspec starts relaykernel whatever the working directory.

With the README's editable install, a folder named relaykernel in the directory
Jupyter starts kernels from (a clone of the project, when Jupyter runs from the
folder above it) used to shadow the package: ``ImportError: cannot import name
'__version__'``, in the supervisor and in every forked worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from tests.kernel.helpers import (
    KernelHandle,
    _descendants,
    _kernel_pid,
    evaluate,
    execute,
    kernel_env,
    relaykernel_only,
    stop_kernel,
)


@relaykernel_only  # the kernelspec `python -m relaykernel install` writes
def test_kernelspec_starts_from_a_directory_with_a_relaykernel_folder(tmp_path):
    prefix = tmp_path / "prefix"
    subprocess.run([sys.executable, "-m", "relaykernel", "install", "--prefix", str(prefix)],
                   check=True, timeout=60, capture_output=True)
    kernels = prefix / "share" / "jupyter" / "kernels"
    spec = json.loads((kernels / "relaykernel" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    home = tmp_path / "home"
    (home / "relaykernel" / "empty").mkdir(parents=True)  # the clone, as the cwd sees it
    km = KernelManager(kernel_name="relaykernel", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    km.shutdown_wait_time = 5.0
    km.start_kernel(env=kernel_env(), cwd=str(home))
    kc = km.client()
    kc.start_channels()
    handle = KernelHandle(km=km, kc=kc, pid=_kernel_pid(km))
    try:
        kc.wait_for_ready(timeout=60)
        handle.initial_children = _descendants(handle.pid)
        assert evaluate(kc, "__import__('os').getcwd()") == repr(str(home))
        package = str(Path(__import__("relaykernel").__file__))
        assert evaluate(kc, "__import__('relaykernel').__file__") == repr(package)
        reply, _ = execute(kc, "import os; os._exit(1)")  # the next worker is forked (fork server)
        assert reply["content"]["status"] == "error"
        assert evaluate(kc, "__import__('relaykernel').__file__") == repr(package)
        assert evaluate(kc, "'' in __import__('sys').path") == "True"  # imports follow %cd
    finally:
        stop_kernel(handle)
