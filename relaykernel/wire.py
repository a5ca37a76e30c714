"""The supervisor <-> worker link protocol, defined once; both sides import it.

The link is one zmq PAIR socket per worker over ipc in a private 0700 directory.
Every link message is a multipart zmq message::

    [kind, meta, *payload]

``kind`` is one of the byte tags below, ``meta`` is a small JSON object (or
empty bytes when a kind carries none) and ``payload`` are zmq frames that are
forwarded without being decoded whenever possible:

* Jupyter messages travel as their wire frames.  Worker -> supervisor they are
  already signed (``<IDS|MSG>``, hmac, header, parent, metadata, content,
  buffers...), so the supervisor only prepends routing identities (shell,
  stdin) or forwards them as they are (iopub).  Supervisor -> worker they are
  the verified frames ``header, parent, metadata, content, buffers...``.
* Binary buffers stay separate frames end to end: nothing is base64-encoded
  or copied into JSON.

Data flow::

    frontend --shell/control/stdin--> supervisor --REQUEST/INPUT_REPLY--> worker
    frontend <--iopub/shell/stdin---- supervisor <--IOPUB/COMM/DONE/STDIN-- worker

This module imports neither IPython nor anything of the supervisor, so both
processes can use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .signing import DELIM  # the <IDS|MSG> delimiter; re-exported for the link code

#: Bumped whenever a kind or meta field changes meaning.  The worker announces
#: it in READY and the supervisor refuses a worker that speaks another version.
PROTOCOL_VERSION: Final = 1

# worker -> supervisor ------------------------------------------------------
#: The worker has imported IPython and waits for ACTIVATE. meta: ReadyMeta.
READY: Final = b"ready"
#: Signed iopub frames (topic first) to publish as they are. meta: empty, or
#: {"started": true} on an execute_input (the worker began running the cell).
IOPUB: Final = b"iopub"
#: Signed iopub frames of a comm_open/comm_msg/comm_close sent by the worker.
#: The supervisor reads the content to keep its comm registry, then publishes.
COMM: Final = b"comm"
#: The current request has finished. meta: DoneMeta. payload: the signed reply
#: frames (starting at the ``<IDS|MSG>`` delimiter), or nothing when the
#: request type has no reply (comm_msg, comm_open, comm_close).
DONE: Final = b"done"
#: A signed input_request to send on stdin to the requesting frontend.
STDIN: Final = b"stdin"
#: ACTIVATE is done (imports made, targets announced): send requests now.
ACTIVATED: Final = b"activated"
#: A comm target was registered or unregistered. meta: TargetMeta.
TARGET: Final = b"target"

# supervisor -> worker ------------------------------------------------------
#: Become the active worker. meta: ActivateMeta.
ACTIVATE: Final = b"activate"
#: A verified shell request. meta: empty; payload: header, parent,
#: metadata, content, buffers...
REQUEST: Final = b"request"
#: A verified input_reply. payload: header, parent, metadata, content.
INPUT_REPLY: Final = b"input_reply"
#: Replay comm_opens for preserved comms of a target the worker just
#: registered. meta: {"comms": [AdoptedComm, ...]}; payload: their buffers.
ADOPT: Final = b"adopt"
#: Exit cleanly. meta: empty.
SHUTDOWN: Final = b"shutdown"


class WireError(ValueError):
    """A link message that does not follow this module's format."""


@dataclass(frozen=True)
class LinkMessage:
    """One decoded link message; ``payload`` frames are left undecoded."""

    kind: bytes
    meta: dict[str, Any]
    payload: Sequence[Any] = field(default_factory=tuple)


def encode(kind: bytes, meta: dict[str, Any] | None = None, payload: Sequence[Any] = ()) -> list[Any]:
    """Frames for ``send_multipart``: ``[kind, meta-json, *payload]``."""
    return [kind, json.dumps(meta).encode() if meta else b"", *payload]


def decode(frames: Sequence[Any]) -> LinkMessage:
    """Split received frames (bytes or zmq.Frame) into a :class:`LinkMessage`.

    Raises :class:`WireError` for anything malformed, so a receiver has one
    exception to catch.
    """
    if len(frames) < 2:
        raise WireError(f"link message has {len(frames)} frame(s), expected at least 2")
    kind = _as_bytes(frames[0])
    raw_meta = _as_bytes(frames[1])
    try:
        meta = json.loads(raw_meta) if raw_meta else {}
    except ValueError as e:
        raise WireError(f"bad meta on {kind!r}: {e}") from None
    if not isinstance(meta, dict):
        raise WireError(f"meta of {kind!r} is not an object")
    return LinkMessage(kind, meta, frames[2:])


def _as_bytes(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes


# meta shapes, for readers and type checkers --------------------------------
try:
    from typing import TypedDict
except ImportError:  # pragma: no cover
    from typing_extensions import TypedDict


class ReadyMeta(TypedDict):
    version: int
    pid: int


class ActivateMeta(TypedDict):
    execution_count: int  # the next cell's number (continues across workers)
    imports: list[str]  # modules to import so preserved comms find their targets
    log_level: int
    memory_soft_limit: int  # bytes; 0 = off (SIGUSR1 then interrupts the cell)


class DoneMeta(TypedDict, total=False):
    status: str  # "ok" | "error" | "aborted"
    execution_count: int  # set by execute requests that stored history


class TargetMeta(TypedDict):
    name: str
    registered: bool


class AdoptedComm(TypedDict):
    """One entry of ADOPT's meta["comms"]; its buffers follow in the payload, in order."""

    content: dict[str, Any]  # a comm_open content: comm_id, target_name, data (latest state)
    metadata: dict[str, Any]
    buffers: int  # how many payload frames belong to this comm
