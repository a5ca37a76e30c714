"""Building and sending Jupyter messages from the worker.

The worker signs its own messages with the kernel's key and the supervisor's
session id (so the frontend sees one session for the kernel's whole life);
the supervisor forwards the frames as they are.  Safe from any thread: the
parent header is read, not mutated, by senders.
"""

from __future__ import annotations

from typing import Any

from .. import wire
from ..signing import Signer, pack
from .link import Link


class Messenger:
    """Signs messages for the current request and sends them over the link."""

    def __init__(self, signer: Signer, link: Link) -> None:
        self.signer = signer
        self.link = link
        self.parent: dict[str, Any] = {}  # header of the request being handled
        self._parent_bytes = b"{}"

    def set_parent(self, header: dict[str, Any], raw: bytes | None = None) -> None:
        """Outputs from now on answer this request; ``raw`` is its header as received,
        reused verbatim so it is not packed again for every output."""
        self.parent = header
        self._parent_bytes = raw if raw is not None else pack(header)

    def frames(self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any] | None = None) -> list[bytes]:
        """Signed wire frames, from the delimiter on."""
        return self.signer.frames(msg_type, content, self._parent_bytes, metadata)

    def publish(self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any] | None = None,
                buffers: list[Any] | None = None, kind: bytes = wire.IOPUB, started: bool = False) -> None:
        """Send an iopub message (signed, topic first) for the supervisor to publish.

        ``started`` marks the execute_input: the supervisor learns the cell began."""
        frames: list[Any] = [f"kernel.{msg_type}".encode(), *self.frames(msg_type, content, metadata)]
        meta: dict[str, Any] | None = {"started": True} if started else None
        if kind == wire.COMM:
            meta = {"msg_type": msg_type, "comm_id": content.get("comm_id")}
        if buffers:
            frames.extend(buffers)
        self.link.send(kind, meta, frames)

    def done(self, reply_type: str | None, content: dict[str, Any] | None, meta: dict[str, Any],
             metadata: dict[str, Any] | None = None) -> None:
        """Finish the current request: its signed reply (if it has one) and the DONE meta."""
        payload = self.frames(reply_type, content or {}, metadata) if reply_type else []
        self.link.send(wire.DONE, meta, payload)

    def input_request(self, prompt: str, password: bool) -> None:
        self.link.send(wire.STDIN, None, self.frames("input_request", {"prompt": prompt, "password": password}))
