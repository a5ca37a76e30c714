"""Helpers for driving comms (and widgets) over the Jupyter protocol from a test client.

The frontend side of a comm is played by the test: it builds ``comm_open`` /
``comm_msg`` / ``comm_close`` with ``kc.session`` and sends them on the shell
channel, and reads what the kernel publishes on iopub.  Every wait is bounded.
"""

from __future__ import annotations

import uuid
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient

from tests.kernel.helpers import (
    DEFAULT_TIMEOUT,
    IS_IPYKERNEL,
    Deadline,
    _get,
    collect_iopub_until_idle,
    get_reply,
    parent_id,
)

#: The seed examples import ``Comm``/``CommManager`` from ``ipykernel.comm``;
#: in relaykernel the same code works with ``relaykernel.comm``.
COMM_IMPORT = ("from ipykernel.comm import Comm, CommManager" if IS_IPYKERNEL
               else "from relaykernel.comm import Comm, CommManager")

#: Run first in a cell: the names the seed examples take for granted.
PRELUDE = COMM_IMPORT + "\ncomm_manager = get_ipython().kernel.comm_manager\n"

#: Registers target 'echo': every comm_msg is sent straight back (data and buffers).
ECHO_TARGET = PRELUDE + """
def _echo_target(comm, open_msg):
    def _on_msg(msg):
        comm.send(msg['content']['data'], buffers=list(msg.get('buffers') or []))
    comm.on_msg(_on_msg)
    comm.on_close(lambda msg: print('echo closed', comm.comm_id))

comm_manager.register_target('echo', _echo_target)
"""


def new_comm_id() -> str:
    return uuid.uuid4().hex


def send_shell(kc: BlockingKernelClient, msg_type: str, content: dict[str, Any],
               metadata: dict[str, Any] | None = None,
               buffers: list[Any] | None = None) -> str:
    """Send a shell message (optionally with binary buffers); return its msg_id."""
    msg = kc.session.msg(msg_type, content, metadata=metadata or {})
    if buffers:
        msg["buffers"] = list(buffers)
    kc.shell_channel.send(msg)
    return msg["header"]["msg_id"]


def comm_open(kc: BlockingKernelClient, comm_id: str, target_name: str,
              data: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
              buffers: list[Any] | None = None) -> str:
    return send_shell(kc, "comm_open",
                      {"comm_id": comm_id, "target_name": target_name, "data": data or {}},
                      metadata=metadata, buffers=buffers)


def comm_msg(kc: BlockingKernelClient, comm_id: str, data: dict[str, Any],
             buffers: list[Any] | None = None) -> str:
    return send_shell(kc, "comm_msg", {"comm_id": comm_id, "data": data}, buffers=buffers)


def comm_close(kc: BlockingKernelClient, comm_id: str, data: dict[str, Any] | None = None) -> str:
    return send_shell(kc, "comm_close", {"comm_id": comm_id, "data": data or {}})


def handled(kc: BlockingKernelClient, msg_id: str,
            timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    """Iopub messages of ``msg_id`` (a request without a reply) up to idle.

    Asserts they are framed by busy ... idle.
    """
    iopub = collect_iopub_until_idle(kc, msg_id, timeout=timeout)
    assert iopub[0]["msg_type"] == "status", [m["msg_type"] for m in iopub]
    assert iopub[0]["content"]["execution_state"] == "busy", iopub[0]["content"]
    assert iopub[-1]["content"]["execution_state"] == "idle"
    return iopub


def comm_info(kc: BlockingKernelClient, target_name: str | None = None,
              timeout: float = DEFAULT_TIMEOUT) -> dict[str, dict[str, Any]]:
    """The ``comms`` of a comm_info_reply (optionally filtered by target)."""
    msg_id = kc.comm_info(target_name)
    reply = get_reply(kc, msg_id, timeout=timeout)
    assert reply["msg_type"] == "comm_info_reply"
    assert reply["content"]["status"] == "ok", reply["content"]
    return reply["content"]["comms"]


def comms_of(iopub: list[dict[str, Any]], msg_type: str,
             comm_id: str | None = None) -> list[dict[str, Any]]:
    """The comm_open / comm_msg / comm_close messages in ``iopub`` (for ``comm_id``)."""
    return [m for m in iopub if m["msg_type"] == msg_type
            and (comm_id is None or m["content"].get("comm_id") == comm_id)]


def only(msgs: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(msgs) == 1, [(m["msg_type"], m["content"]) for m in msgs]
    return msgs[0]


def wait_iopub(kc: BlockingKernelClient, predicate: Any, timeout: float = DEFAULT_TIMEOUT,
               what: str = "an iopub message") -> dict[str, Any]:
    """The first iopub message for which ``predicate(msg)`` is true; others are dropped."""
    deadline = Deadline(timeout)
    while not deadline.expired():
        msg = _get(kc.get_iopub_msg, deadline)
        if msg is not None and predicate(msg):
            return msg
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


__all__ = [
    "COMM_IMPORT", "ECHO_TARGET", "PRELUDE", "comm_close", "comm_info", "comm_msg",
    "comm_open", "comms_of", "handled", "new_comm_id", "only", "parent_id", "send_shell",
    "wait_iopub",
]
