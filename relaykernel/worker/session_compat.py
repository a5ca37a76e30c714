"""``kernel.session`` and ``kernel.iopub_socket``, for code written against ipykernel.

Some libraries and notebooks publish on iopub themselves::

    kernel = get_ipython().kernel
    kernel.session.send(kernel.iopub_socket, "display_data", content, parent=kernel.get_parent())

The worker has no iopub socket: the supervisor owns it.  :class:`IOPubRelay`
stands in for one.  ``Session.send`` signs the message with the kernel's key
and session id, as the worker's own messages are, and hands the frames to
``send_multipart``; they go over the link and the supervisor publishes them
as they are.  Comm messages sent this way travel as comm traffic, so the
supervisor's registry of open comms (what survives a worker crash) sees them.

``Session`` is jupyter_client's, imported on first use (~130 ms): a worker
whose user code never asks for it does not pay for it.
"""

from __future__ import annotations

import json
from typing import Any

from .. import wire
from ..signing import DELIM


class IOPubRelay:
    """Looks like a zmq PUB socket to ``Session.send``; sends over the link instead."""

    def __init__(self, kernel: Any) -> None:
        self._kernel = kernel

    def send_multipart(self, frames: Any, flags: int = 0, copy: bool = True, track: bool = False,
                       **kwargs: Any) -> None:
        frames = list(frames)
        at = next((i for i, f in enumerate(frames) if _bytes(f) == DELIM), None)
        signed = frames[at:] if at is not None else []  # the wire.SIGNED layout
        if len(signed) < wire.SIGNED.buffers:
            raise ValueError("not a Jupyter message: no <IDS|MSG> delimiter followed by five parts")
        header = json.loads(_bytes(signed[wire.SIGNED.header]))
        msg_type = str(header.get("msg_type", ""))
        # exactly one topic frame (wire.PUBLISHED): the supervisor finds content and buffers by position
        topic = _bytes(frames[0]) if at else f"kernel.{msg_type}".encode()
        payload = [topic, *signed]
        meta: dict[str, Any] | None = None
        kind = wire.IOPUB
        if msg_type in wire.COMM_TYPES:
            content = json.loads(_bytes(signed[wire.SIGNED.content]))
            kind, meta = wire.COMM, {"msg_type": msg_type, "comm_id": content.get("comm_id")}
        self._kernel.flush_streams(fds=False)  # after what the cell printed before it
        self._kernel.link.send(kind, meta, payload)

    def send(self, data: Any, flags: int = 0, copy: bool = True, track: bool = False) -> None:
        raise ValueError("iopub takes whole Jupyter messages: use kernel.session.send(kernel.iopub_socket, ...)")


def _bytes(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else bytes(memoryview(frame))


def make_session(signer: Any) -> Any:
    """A jupyter_client Session that signs as the kernel does (same key, same session id)."""
    from jupyter_client.session import Session

    return Session(key=signer.key, signature_scheme=signer.signature_scheme,
                   session=signer.session_id, username="kernel")
