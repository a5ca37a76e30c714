"""What a frontend that reconnects mid-cell learns about the kernel's status.

JupyterLab shows the last status message it received as the kernel's (except
those whose parent is kernel_info or comm_info: jupyter_server's
untracked_message_types).  On connecting it asks kernel_info, comm_info and,
with ipywidgets, opens the widget control comm and asks ``request_states``.
Whatever answers those while a cell runs, the last status before the cell's
own idle must say busy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.kernel.comm_helpers import comm_close, comm_msg, comm_open, new_comm_id, send_shell
from tests.kernel.helpers import (
    IS_IPYKERNEL,
    Deadline,
    _get,
    execute_ok,
    get_reply,
    parent_id,
    relaykernel_only,
)

CONTROL_TARGET = "jupyter.widget.control"

#: A cell that runs until the test creates FLAG (bounded: 60 s).
WAITING_CELL = """\
import os, time
print("started", flush=True)
_end = time.monotonic() + 60
while not os.path.exists({flag!r}) and time.monotonic() < _end:
    time.sleep(0.02)
"""


def _idles(seen: list[dict[str, Any]]) -> set[str]:
    return {parent_id(m) or "" for m in seen
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"}


def _collect(kc: Any, seen: list[dict[str, Any]], done: Any, what: str,
             timeout: float = 60.0) -> None:
    """Read iopub into ``seen`` until ``done(seen)``; bounded."""
    deadline = Deadline(timeout)
    while not done(seen):
        if deadline.expired():
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; got "
                                 f"{[(m['msg_type'], parent_id(m)) for m in seen]}")
        msg = _get(kc.get_iopub_msg, deadline)
        if msg is not None:
            seen.append(msg)


def _started(cell_id: str) -> Any:
    return lambda seen: any(parent_id(m) == cell_id and m["msg_type"] == "stream"
                            and "started" in m["content"]["text"] for m in seen)


def _reconnect_requests(kc: Any, channel: str) -> list[str]:
    """What JupyterLab and its widget manager send when a page (re)connects; their ids."""
    if channel == "control":
        msg = kc.session.msg("kernel_info_request", {})
        kc.control_channel.send(msg)
        return [msg["header"]["msg_id"]]
    control = new_comm_id()
    return [send_shell(kc, "kernel_info_request", {}),
            send_shell(kc, "comm_info_request", {"target_name": "jupyter.widget"}),
            comm_open(kc, control, CONTROL_TARGET, metadata={"version": "1.0.0"}),
            comm_msg(kc, control, {"method": "request_states"}),
            comm_close(kc, control)]


@pytest.mark.parametrize("channel", [
    "shell",
    # ipykernel answers control requests mid-cell, its own idle last (JupyterLab
    # ignores that one: kernel_info is untracked); relaykernel says busy again
    pytest.param("control", marks=relaykernel_only),
])
def test_answers_during_a_cell_leave_the_kernel_busy(kernel: Any, tmp_path: Path, channel: str
                                                      ) -> None:
    kc = kernel.kc
    execute_ok(kc, "import ipywidgets; s = ipywidgets.IntSlider(value=3)")
    flag = tmp_path / "release"
    cell = kc.execute(WAITING_CELL.format(flag=str(flag)), allow_stdin=False)
    seen: list[dict[str, Any]] = []
    _collect(kc, seen, _started(cell), "the cell to start")

    asked = _reconnect_requests(kc, channel)
    if not IS_IPYKERNEL or channel == "control":
        # answered at once, while the cell runs (ipykernel's shell queues them behind it)
        _collect(kc, seen, lambda s: set(asked) <= _idles(s), "the answers' idles")
    flag.touch()
    _collect(kc, seen, lambda s: {cell, *asked} <= _idles(s), "every idle")

    statuses = [(parent_id(m), m["content"]["execution_state"]) for m in seen
                if m["msg_type"] == "status"]
    before = statuses[:statuses.index((cell, "idle"))]
    assert before and before[-1][1] == "busy", (
        f"the kernel looked {before[-1][1] if before else 'unknown'} while the cell ran; "
        f"statuses (parent, state): {statuses}")
    for msg_id in (cell, *asked):  # each request still has exactly one idle
        assert statuses.count((msg_id, "idle")) == 1, (msg_id, statuses)
    assert get_reply(kc, cell)["content"]["status"] == "ok"
