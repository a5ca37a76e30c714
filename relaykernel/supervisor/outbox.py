"""The supervisor's own messages to frontends: replies, status and streams.

Most of what frontends receive was signed by the worker and is forwarded as
it is; this is the rest (kernel_info, busy/idle, crash reports, aborts).
Used by whichever thread owns the sockets: the early responder first, then
the supervisor loop.
"""

from __future__ import annotations

from typing import Any

import zmq

from ..signing import Signer
from ..wire import send_frames
from .sockets import Incoming, KernelSockets

#: status contents, packed once: they go out twice per request.
_STATUS = {state: f'{{"execution_state": "{state}"}}'.encode() for state in ("busy", "idle", "starting")}


class Outbox:
    """Signs and sends on the kernel's sockets."""

    def __init__(self, sockets: KernelSockets, signer: Signer) -> None:
        self.sockets = sockets
        self.signer = signer

    def reply(self, request: Incoming, content: dict[str, Any] | None) -> None:
        """The ``*_reply`` to a ``*_request``, on the socket it came from."""
        if content is None or not request.msg_type.endswith("_request"):
            return
        reply_type = request.msg_type[: -len("request")] + "reply"
        frames = self.signer.frames(reply_type, content, request.header_bytes)
        send_frames(self.reply_socket(request), request.idents + frames)

    def reply_socket(self, request: Incoming) -> zmq.Socket:
        """Where a request's reply goes: the socket it came from."""
        return self.sockets.control if request.channel == "control" else self.sockets.shell

    def publish(self, parent: Incoming | None, msg_type: str, content: dict[str, Any] | bytes,
                buffers: list[Any] | None = None) -> None:
        frames = self.signer.frames(msg_type, content, parent.header_bytes if parent else None)
        send_frames(self.sockets.iopub, [b"kernel." + msg_type.encode(), *frames, *(buffers or ())])

    def status(self, state: str, parent: Incoming | None) -> None:
        self.publish(parent, "status", _STATUS[state])

    def welcome(self, budget: int = 64) -> None:
        """Answer new iopub subscriptions (JEP 65): an ``iopub_welcome`` on the topic
        subscribed tells a client its subscription is in place, so it can send
        requests without missing their outputs (no kernel_info probing needed)."""
        for _ in range(budget):
            try:
                event = self.sockets.iopub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(event) != 1 or event[0][:1] != b"\x01":
                continue  # an unsubscription, or not a subscription at all
            topic = event[0][1:]
            content = {"subscription": topic.decode("utf-8", "replace")}
            frames = self.signer.frames("iopub_welcome", content, None)
            send_frames(self.sockets.iopub, [topic, *frames] if topic else frames)

    def stream(self, parent: Incoming | None, name: str, text: str) -> None:
        """A stream message; without a parent it reaches every frontend's output area."""
        self.publish(parent, "stream", {"name": name, "text": text})
