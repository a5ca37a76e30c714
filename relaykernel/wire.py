"""The supervisor <-> worker link protocol, defined once; both sides import it.

The link is one zmq PAIR socket per worker over ipc in a private 0700 directory.
Every link message carries ``kind``, ``meta`` and ``payload``:

* ``kind`` is one of the byte tags below;
* ``meta`` is a small JSON object (empty bytes when a kind carries none);
* ``payload`` is a list of frames, forwarded without being decoded whenever
  possible.

On the socket that is the multipart zmq message ``[packed, *large]``:
``packed`` holds kind, meta (whatever its size) and every payload frame under
:data:`PACK_LIMIT` bytes (a size table, then the bytes); larger payload
frames (binary buffers) follow as zmq frames of their own, sent by reference
and never copied.  A Jupyter message has seven small frames, so this saves
six zmq sends and receives per message on the link: each costs microseconds.
:func:`decode` gives the payload back as the list it was, small frames as
``bytes``.

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

Each worker also has a *side* PAIR socket (the link's endpoint plus
:data:`SIDE_SUFFIX`), supervisor -> worker only, which a thread of its own
reads in the worker: what must reach the worker while its main thread runs a
cell, waits in ``input()`` or is stopped at a breakpoint -- requests for
subshells (REQUEST with a ``subshell_id``), their INPUT_REPLYs, SUBSHELLS.
Replies and outputs always come back on the link, so a DONE never overtakes
the outputs of its request.

This module imports neither IPython nor anything of the supervisor, so both
processes can use it.
"""

from __future__ import annotations

import json
import signal
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import zmq

#: Bumped whenever a kind or meta field changes meaning.  The worker announces
#: it in READY and the supervisor refuses a worker that speaks another version.
PROTOCOL_VERSION: Final = 5  # 5: RequestMeta.shared

# worker -> supervisor ------------------------------------------------------
#: The worker has imported IPython and waits for ACTIVATE. meta: ReadyMeta.
READY: Final = b"ready"
#: Signed iopub frames (topic first) to publish as they are. meta: empty, or
#: {"started": true} on an execute_input (the worker began running the cell),
#: with "subshell_id" when the cell runs in a subshell.
IOPUB: Final = b"iopub"
#: Signed iopub frames of a comm_open/comm_msg/comm_close sent by the worker.
#: The supervisor reads the content to keep its comm registry, then publishes.
COMM: Final = b"comm"
#: The current request has finished. meta: DoneMeta. payload: the signed reply
#: frames (starting at the ``<IDS|MSG>`` delimiter), or nothing when the
#: request type has no reply (comm_msg, comm_open, comm_close).
DONE: Final = b"done"
#: A signed input_request to send on stdin to the requesting frontend.
#: meta: empty, or {"subshell_id": id} when a subshell's request asks.
STDIN: Final = b"stdin"
#: ACTIVATE is done (imports made, targets announced): send requests now.
ACTIVATED: Final = b"activated"
#: A comm target was registered or unregistered. meta: TargetMeta.
TARGET: Final = b"target"
#: The answer to a DEBUG request: the signed debug_reply frames (from the
#: ``<IDS|MSG>`` delimiter on), for the supervisor to send on control.
#: meta: {"msg_id": the debug_request's msg_id, "stopped": [DAP thread ids
#: stopped now], "attached": whether a debug session is attached}; or
#: {"replayed": true} and no payload, when a DEBUG replay is done.
DEBUG_REPLY: Final = b"debug_reply"
#: The worker forked a snapshot of itself (worker/snapshot.py), which replaces
#: any older one, or dropped its snapshot and says why. meta: SnapshotMeta.
SNAPSHOT: Final = b"snapshot"
#: The worker template (worker/template.py) forked a worker for a FORK.
#: meta: {"pid": the child's pid, "number": the FORK's number}.
FORKED: Final = b"forked"
#: A child of the worker template exited (the template reaped it).
#: meta: {"pid": int, "exitcode": int, as multiprocess's Process.exitcode}.
EXITED: Final = b"exited"

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
#: To the worker template: fork a worker that connects its link to meta's
#: endpoint and says READY there. meta: WakeMeta.  Answered by FORKED.
FORK: Final = b"fork"
#: On the side socket: the subshells that exist now (JEP 91), for %subshell.
#: meta: {"ids": [str, ...]}.  A worker starts a subshell's thread when its
#: first request comes; the supervisor owns the ids (they outlive workers).
SUBSHELLS: Final = b"subshells"

#: On the side socket: interrupt the subshells running user code (a SIGINT
#: reaches only the main thread).  meta: empty.
INTERRUPT: Final = b"interrupt"
#: On the side socket: a verified debug_request (payload: header, parent,
#: metadata, content), answered by a DEBUG_REPLY on the link, while the main
#: thread runs a cell or is stopped at a breakpoint (worker/debugger.py).  Or,
#: with meta {"replay": {"attach": arguments, "cells": [code, ...],
#: "breakpoints": {path: [breakpoint, ...]}}} and no payload: re-create the
#: frontend's debug session in a new worker, answered by a DEBUG_REPLY with
#: meta {"replayed": true} and no payload (the supervisor holds requests until then).
DEBUG: Final = b"debug"
#: The subshell id of the lane that runs the main shell's comm messages while a
#: cell of the main shell runs: as tasks of the main thread's event loop, as soon
#: as the cell awaits (worker/subshells.py).  Never a frontend's subshell id.
BESIDE_CELL: Final = "relaykernel:beside-cell"

#: The side socket's endpoint is the link's plus this.
SIDE_SUFFIX: Final = "-side"

#: Not a message but a signal: a worker writes its main thread's Python stack to
#: its crash log when it gets this one (faulthandler, so even a thread stuck in C
#: code answers).  The supervisor sends it to a worker that ignored an interrupt
#: for the grace period, just before replacing it: the error then says where the
#: cell was stuck.
STACK_SIGNAL: Final = signal.SIGUSR2


#: Jupyter message types of comm traffic (either direction).
COMM_TYPES: Final = frozenset({"comm_open", "comm_msg", "comm_close"})

#: Request types the worker answers (the supervisor answers kernel_info,
#: comm_info, shutdown, interrupt, usage and debug itself).  On control they
#: skip the queue: they run next, after the request running now.
WORKER_REQUESTS: Final = frozenset({"execute_request", "complete_request", "inspect_request",
                                    "history_request", "is_complete_request"})


def error_reply(ename: str, evalue: str, traceback: list[str] | None = None) -> dict[str, Any]:
    """A ``*_reply`` content that says the request failed (the spec's error shape)."""
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": traceback or []}


def unknown_request_error(msg_type: str, channel: str) -> dict[str, Any]:
    """The reply content for a request type the kernel does not handle: every request
    gets one reply, and a client waiting for it learns why instead of timing out."""
    return error_reply("UnknownMessageType", f"relaykernel does not handle {msg_type!r} on the {channel} channel")


class WireError(ValueError):
    """A link message that does not follow this module's format."""


class LinkMessage(NamedTuple):
    """One decoded link message; ``payload`` frames are left undecoded."""

    kind: bytes
    meta: dict[str, Any]
    payload: Sequence[Any] = ()


#: Payload frames smaller than this are packed into the layout frame.
PACK_LIMIT: Final = 1 << 16
_SEPARATE = -1  # a length-table entry: this payload frame is the next zmq frame
_COUNT = struct.Struct("<I")


def _nbytes(frame: Any) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


def encode(kind: bytes, meta: Mapping[str, Any] | None = None, payload: Sequence[Any] = ()) -> list[Any]:
    """Frames for :func:`send_frames`: ``[packed, *large]``.

    ``packed`` holds ``kind``, the meta JSON (of any size) and every payload
    frame under PACK_LIMIT: a count, a table of sizes, then the bytes.  Payload
    frames may be bytes, memoryviews or zmq.Frames."""
    raw_meta = json.dumps(meta).encode() if meta else b""
    # kind and meta are always packed, whatever their size: decode needs them
    # in the first frame (a 64 KiB meta, such as ADOPT's widget states, once went
    # out as a frame of its own and the message was rejected)
    sizes: list[int] = [len(kind), len(raw_meta)]
    small: list[Any] = [kind, raw_meta]
    large: list[Any] = []
    for frame in payload:
        size = _nbytes(frame)
        if size < PACK_LIMIT:
            sizes.append(size)
            small.append(frame)
        else:
            sizes.append(_SEPARATE)
            large.append(frame)
    return [struct.pack(f"<I{len(sizes)}q", len(sizes), *sizes) + b"".join(small), *large]


def decode(frames: Sequence[Any]) -> LinkMessage:
    """Split received frames (bytes or zmq.Frame) into a :class:`LinkMessage`.

    Raises :class:`WireError` for anything malformed, so a receiver has one
    exception to catch.
    """
    if not frames:
        raise WireError("empty link message")
    parts = _unpack(as_bytes(frames[0]), frames[1:])
    if len(parts) < 2 or not isinstance(parts[0], bytes) or not isinstance(parts[1], bytes):
        raise WireError("link message without kind and meta")
    kind, raw_meta = parts[0], parts[1]
    try:
        meta = json.loads(raw_meta) if raw_meta else {}
    except ValueError as e:
        raise WireError(f"bad meta on {kind!r}: {e}") from None
    if not isinstance(meta, dict):
        raise WireError(f"meta of {kind!r} is not an object")
    return LinkMessage(kind, meta, parts[2:])


def _unpack(packed: bytes, large: Sequence[Any]) -> list[Any]:
    try:
        (count,) = _COUNT.unpack_from(packed)
        sizes = struct.unpack_from(f"<{count}q", packed, _COUNT.size)
    except struct.error as e:
        raise WireError(f"bad size table: {e}") from None
    pos = _COUNT.size + 8 * count
    end = len(packed)
    parts: list[Any] = []
    separate = iter(large)
    for size in sizes:
        if size == _SEPARATE:
            frame = next(separate, None)
            if frame is None:
                raise WireError("the size table names more frames than arrived")
            parts.append(frame)
        elif 0 <= size <= end - pos:
            parts.append(packed[pos : pos + size])
            pos += size
        else:
            raise WireError("a size overruns the packed frame")
    if pos != end or next(separate, None) is not None:
        raise WireError("the size table does not match the frames that arrived")
    return parts


def as_bytes(frame: Any) -> bytes:
    """A payload frame's bytes: small frames are bytes already, large ones zmq.Frames."""
    return frame if isinstance(frame, bytes) else frame.bytes


_MORE: Final = int(zmq.SNDMORE)  # plain ints: IntFlag arithmetic costs ~1 us a frame
_NOBLOCK: Final = int(zmq.NOBLOCK)
#: pyzmq's Socket.send minus its Python wrapper, which only adds the DRAFT
#: routing_id/group arguments; ~0.5 us a frame, and a status message is 7 frames
_send: Final = zmq.backend.Socket.send


def send_frames(sock: zmq.Socket, frames: Sequence[Any]) -> None:
    """``send_multipart``, cheaper per frame: small frames are copied (cheaper
    than tracking a reference), zmq.Frames and large buffers go by reference."""
    last = len(frames) - 1
    sent = 0
    try:
        for frame in frames:
            if type(frame) is bytes:
                copy = len(frame) < PACK_LIMIT
            else:
                copy = not isinstance(frame, zmq.Frame) and _nbytes(frame) < PACK_LIMIT
            _send(sock, frame, _MORE if sent < last else 0, copy)
            sent += 1
    except BaseException:
        # a signal (KeyboardInterrupt in a cell) between two frames: finish the
        # message, or the next one would be glued to its first half
        if 0 < sent <= last:
            for frame in frames[sent:]:
                _send(sock, frame, _MORE if sent < last else 0, True)
                sent += 1
        raise


def recv_frames(sock: zmq.Socket) -> list[zmq.Frame]:
    """``recv_multipart(NOBLOCK, copy=False)``, cheaper: a frame says itself
    whether more follow, so no getsockopt(RCVMORE) per frame.  Raises zmq.Again
    when nothing is waiting."""
    recv = sock.recv
    frame = recv(_NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:
        frame = recv(0, copy=False)
        frames.append(frame)
    return frames


# payload layouts: where each part of a Jupyter message sits -------------------
class FrameLayout(NamedTuple):
    """Positions of a Jupyter message's parts in a link payload, one instance per layout."""

    header: int
    parent: int
    metadata: int
    content: int
    buffers: int  # the first buffer; the rest follow to the end


#: A request the supervisor verified (REQUEST, INPUT_REPLY): header, parent, metadata, content, buffers.
VERIFIED: Final = FrameLayout(0, 1, 2, 3, 4)
#: A message the worker signed for a socket (DONE, STDIN): ``<IDS|MSG>``, hmac, then the parts.
SIGNED: Final = FrameLayout(2, 3, 4, 5, 6)
#: The same published on iopub (IOPUB, COMM): the topic comes first.
PUBLISHED: Final = FrameLayout(3, 4, 5, 6, 7)


# meta shapes, for readers and type checkers --------------------------------
try:
    from typing import TypedDict
except ImportError:  # pragma: no cover
    from typing_extensions import TypedDict


class ReadyMeta(TypedDict, total=False):
    version: int
    pid: int
    #: the worker's fd numbers of the read ends of its stdout/stderr capture pipes
    #: ({"stdout": n, "stderr": m}); the supervisor opens them (/proc/PID/fd) to read,
    #: after a crash, what native code wrote that the worker could not forward
    output_pipes: dict[str, int]


class ActivateMeta(TypedDict):
    execution_count: int  # the next cell's number (continues across workers)
    imports: list[str]  # modules to import so preserved comms find their targets
    log_level: int
    memory_soft_limit: int  # bytes; 0 = off (SIGUSR1 then interrupts the cell)


class ActivateOptions(ActivateMeta, total=False):
    """ACTIVATE's meta as the pool sends it: the loop's fields plus the pool's own."""

    snapshots: bool  # take snapshots (Supervisor.snapshots); absent: WorkerConfig.snapshots
    snapshots_user_off: bool  # off because the user said %snapshot off in an earlier worker
    snapshot_max_memory: int  # bytes (Supervisor.snapshot_max_memory): no snapshot of a larger worker; 0 = no limit
    snapshot_cost_share: float  # Supervisor.snapshot_cost_share: what snapshots may cost, of the cells' time


class SnapshotMeta(TypedDict, total=False):
    """SNAPSHOT's meta: a snapshot taken (pid, execution_count, wake, names) or none
    kept (skipped: why, once per reason the worker told the user on stderr)."""

    pid: int  # the sleeping child; the worker ends it when it takes the next one
    execution_count: int  # the number of the next cell at the snapshot: its state is before that cell
    wake: str  # a FIFO in the private directory: write one WakeMeta line to wake the child
    names: int  # user variables (and imports) the snapshot holds
    skipped: str  # no snapshot is kept now, and why
    enabled: bool  # the user turned snapshots on or off for the session (%snapshot on/off)


class WakeMeta(TypedDict):
    """What the supervisor writes (one JSON line) to a snapshot's wake FIFO, or sends
    the worker template in a FORK: where the child connects its new link, and its
    files, as a new worker's WorkerConfig says."""

    endpoint: str
    number: int
    progress_file: str
    crash_log: str


class SharedSpec(TypedDict):
    """Where a REQUEST's large buffers wait in the supervisor's shared region
    (transport.py): the worker maps ``/proc/<pid>/fd/<fd>`` and puts each buffer
    back at its frame index, in place of the empty frame sent on the link."""

    pid: int  # the supervisor's
    fd: int  # the region's memfd, in the supervisor
    size: int  # the region's size in bytes
    frames: list[list[int]]  # [frame index, offset in the region, length] per buffer


class RequestMeta(TypedDict, total=False):
    """REQUEST's and INPUT_REPLY's meta (empty for a shell request of the parent subshell)."""

    channel: str  # "control": it came on control (the worker's get_parent('control'))
    subshell_id: str  # it belongs to this subshell: sent on the side socket
    shared: SharedSpec  # some of its buffers are in the shared region, not on the link


class DoneMeta(TypedDict, total=False):
    status: str  # "ok" | "error" | "aborted"
    subshell_id: str  # the request ran in this subshell (absent: the parent subshell)
    execution_count: int  # set by execute requests that stored history
    exit: bool  # exit() in the cell: the supervisor replaces the worker


class TargetMeta(TypedDict):
    name: str
    registered: bool


class AdoptedComm(TypedDict):
    """One entry of ADOPT's meta["comms"]; its buffers follow in the payload, in order."""

    content: dict[str, Any]  # a comm_open content: comm_id, target_name, data (latest state)
    metadata: dict[str, Any]
    buffers: int  # how many payload frames belong to this comm
