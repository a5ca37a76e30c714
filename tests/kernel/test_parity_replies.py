"""Requests a drop-in for ipykernel must answer: connect_request (deprecated,
still answered), and which shell replies may overtake a running cell's."""

from __future__ import annotations

from pathlib import Path

from tests.kernel.helpers import (
    Deadline,
    _get,
    collect_iopub_until_idle,
    get_reply,
    parent_id,
    relaykernel_only,
)


def test_connect_request_is_answered_with_the_kernels_ports(kernel):
    kc = kernel.kc
    request = kc.session.msg("connect_request", {})
    kc.shell_channel.send(request)
    reply = get_reply(kc, request["header"]["msg_id"], timeout=15)
    assert reply["msg_type"] == "connect_reply"
    content = reply["content"]
    assert content["status"] == "ok"
    km = kernel.km
    for channel in ("shell", "iopub", "stdin", "hb", "control"):
        assert content[f"{channel}_port"] == getattr(km, f"{channel}_port"), channel


def _run_until_released(kc, release: Path) -> str:
    """Start a cell that runs until ``release`` exists (30 s at most); return its msg_id
    once it is running."""
    exec_id = kc.execute(f"import os, time\nend = time.monotonic() + 30\n"
                         f"while not os.path.exists({str(release)!r}) and time.monotonic() < end:\n"
                         f"    time.sleep(0.01)\n")
    deadline = Deadline(15)
    while True:
        msg = _get(kc.get_iopub_msg, deadline)
        assert not deadline.expired(), "the cell never started"
        if msg is not None and parent_id(msg) == exec_id and msg["msg_type"] == "execute_input":
            return exec_id


# A deliberate difference (README.md, "What is different"): ipykernel answers shell
# requests in arrival order; relaykernel answers kernel_info and comm_info at once, so
# a page reloaded while a cell runs is usable (kernel_info) and gets its widgets back
# (comm_info) without waiting for the cell.
@relaykernel_only
def test_kernel_info_and_comm_info_overtake_a_running_cell(kernel, tmp_path):
    kc = kernel.kc
    release = tmp_path / "release"
    exec_id = _run_until_released(kc, release)
    asked = [kc.kernel_info(), kc.comm_info()]
    order = []
    deadline = Deadline(40)
    try:
        while len(order) < 2:
            msg = _get(kc.get_shell_msg, deadline)
            assert not deadline.expired(), f"replies so far: {order}"
            if msg is not None and parent_id(msg) in (*asked, exec_id):
                order.append(parent_id(msg))
    finally:
        release.touch()
    assert order == asked, "kernel_info or comm_info waited for the running cell"
    assert get_reply(kc, exec_id, timeout=15)["content"]["status"] == "ok"
    collect_iopub_until_idle(kc, exec_id)
