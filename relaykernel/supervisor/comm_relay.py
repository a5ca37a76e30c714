"""What the supervisor does with comm traffic: keep the registry, serve
ipywidgets' control comm, and hand preserved comms to a new worker.

Used by the supervisor's main thread.  Frontend and worker comm messages pass
through here on their way (the loop still sends them); nothing here touches a
socket.  The registry itself (``comm_registry.py``) knows no protocol beyond
the comm and widget message shapes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .. import wire
from ..wire import COMM_TYPES
from .comm_registry import WIDGET_TARGET, CommRegistry
from .sockets import Incoming

log = logging.getLogger("relaykernel.supervisor")

#: ipywidgets' control comm: request_states is answered from the registry.
WIDGET_CONTROL_TARGET = "jupyter.widget.control"


class CommRelay:
    def __init__(self) -> None:
        self.registry = CommRegistry()
        self._widget_control_comms: set[str] = set()

    def __len__(self) -> int:
        return len(self.registry)

    def __contains__(self, comm_id: object) -> bool:
        return comm_id in self.registry

    def info(self, target_name: str | None) -> dict[str, dict[str, str]]:
        return self.registry.info(target_name)

    # ------------------------------------------------------------- tracking
    def from_frontend(self, msg: Incoming) -> None:
        """Keep the registry current; a malformed comm message is logged (and still run)."""
        try:
            if msg.msg_type == "comm_open":
                self.registry.opened(msg.content, msg.metadata, list(msg.buffers), "frontend")
            elif msg.msg_type == "comm_msg":
                self.registry.message(msg.content, list(msg.buffers), "frontend")
        except (ValueError, TypeError) as e:
            log.warning("malformed %s: %s", msg.msg_type, e)

    def frontend_closed(self, comm_id: str) -> None:
        self.registry.closed(comm_id)

    def from_worker(self, lm: wire.LinkMessage) -> None:
        """A COMM link message: iopub frames (wire.PUBLISHED)."""
        msg_type, comm_id = lm.meta.get("msg_type"), str(lm.meta.get("comm_id"))
        at, payload = wire.PUBLISHED, lm.payload
        if msg_type == "comm_open":
            self.registry.opened(_json(payload[at.content]), _json(payload[at.metadata]),
                                 list(payload[at.buffers:]), "kernel")
        elif msg_type == "comm_msg":
            record = self.registry.get(comm_id)
            if record is not None and record.is_widget:  # only widget state is tracked
                self.registry.message(_json(payload[at.content]), list(payload[at.buffers:]), "kernel")
        elif msg_type == "comm_close":
            self.registry.closed(comm_id)

    # ------------------------------------------------ ipywidgets' control comm
    def is_widget_control(self, msg: Incoming) -> bool:
        """Whether this frontend message belongs to a widget control comm (served here)."""
        if msg.msg_type not in COMM_TYPES:
            return False
        if msg.msg_type == "comm_open":
            return msg.content.get("target_name") == WIDGET_CONTROL_TARGET
        return msg.content.get("comm_id") in self._widget_control_comms

    def widget_control(self, msg: Incoming) -> tuple[dict[str, Any], list[bytes]] | None:
        """Handle a control-comm message; returns the comm_msg content (and buffers) to
        publish, if any.  Lets a reloaded page get its widgets back even while the
        worker is busy or being replaced (the frontend gives up after a few seconds)."""
        comm_id = msg.content.get("comm_id")
        if not isinstance(comm_id, str):
            return None
        if msg.msg_type == "comm_open":
            self._widget_control_comms.add(comm_id)
        elif msg.msg_type == "comm_close":
            self._widget_control_comms.discard(comm_id)
        elif (msg.content.get("data") or {}).get("method") == "request_states":
            states, buffers = self.registry.widget_states()
            return {"comm_id": comm_id, "data": states}, buffers
        return None

    # ------------------------------------------------------------- adoption
    def open_ids(self) -> set[str]:
        return {record.comm_id for record in self.registry}

    def imports_for_new_worker(self) -> list[str]:
        """Modules a new worker imports by itself to bring preserved comms back."""
        return ["ipywidgets"] if self.registry.for_target(WIDGET_TARGET) else []

    def adoption(self, target_name: str, orphans: set[str]) -> list[Any] | None:
        """The ADOPT link message replaying the preserved comms of a target just
        registered in the worker (removed from ``orphans``), or None."""
        adoptable = [r.comm_id for r in self.registry.for_target(target_name) if r.comm_id in orphans]
        if not adoptable:
            return None
        orphans.difference_update(adoptable)
        comms: list[wire.AdoptedComm] = []
        frames: list[bytes] = []
        for comm_id in adoptable:
            content, metadata, buffers = self.registry.open_message_for_replay(comm_id)
            comms.append({"content": content, "metadata": metadata, "buffers": len(buffers)})
            frames.extend(buffers)
        log.info("replaying %d comm(s) of target %r", len(comms), target_name)
        return wire.encode(wire.ADOPT, {"comms": comms}, frames)


def _json(frame: Any) -> dict[str, Any]:
    value = json.loads(frame.bytes if hasattr(frame, "bytes") else frame)
    return value if isinstance(value, dict) else {}
