"""Configuration the Jupyter way, and the ipc transport, on real kernels."""

from __future__ import annotations

import os

from tests.kernel.helpers import (
    evaluate,
    execute_ok,
    relaykernel_only,
    start_kernel,
    stop_kernel,
    wait_for,
    worker_processes,
)


@relaykernel_only
def test_config_file_on_the_jupyter_config_path_is_read(tmp_path):
    """c.Supervisor.standby_workers = 2 in relaykernel_config.py: one active + two warm workers."""
    (tmp_path / "relaykernel_config.py").write_text("c.Supervisor.standby_workers = 2\n")
    handle = start_kernel(env={"JUPYTER_CONFIG_DIR": str(tmp_path)})
    try:
        execute_ok(handle.kc, "1")
        wait_for(lambda: len(worker_processes(handle.pid)) == 3, 30, what="three worker processes")
    finally:
        stop_kernel(handle)


def test_ipc_transport(tmp_path):
    """A connection file with transport ipc: every channel works over unix sockets."""
    handle = start_kernel(transport="ipc", ip=str(tmp_path / "kernel-ipc"))
    try:
        assert handle.km.transport == "ipc"
        _, iopub = execute_ok(handle.kc, "print('over ipc'); 6*7")
        assert any(m["msg_type"] == "stream" and "over ipc" in m["content"]["text"] for m in iopub)
        assert evaluate(handle.kc, "6*7") == "42"
        assert any(name.startswith("kernel-ipc-") for name in os.listdir(tmp_path))
    finally:
        stop_kernel(handle)
