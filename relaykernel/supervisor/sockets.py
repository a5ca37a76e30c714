"""The Jupyter sockets of the kernel, and verification of what arrives on them.

Runs in the supervisor's main thread, which owns shell, control, stdin and
iopub (the heartbeat socket belongs to heartbeat.py's thread).  Signing and
verification happen here and nowhere else in the supervisor: everything past
:func:`verify` is trusted.

What a client can cost the supervisor is bounded here, before the sockets
bind (libzmq copies a socket's options into each connection it accepts): a
subscriber that stops reading holds at most ``iopub_queue_limit`` messages
(then only its own messages are dropped), an inbound frame larger than
``max_message_size`` closes its connection before it is buffered, and in
plain text a routing identity belongs to the connection that claimed it
first (no ROUTER_HANDOVER: a process that read a client's session id off
iopub cannot take over its replies).  CurveZMQ keys from the connection file
encrypt all five sockets, and then only their holders can connect at all.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator
from typing import Any

import zmq

from .. import wire
from ..lazylog import LazyLogger
from ..signing import DELIM, Signer
from ..wire import recv_frames

log = LazyLogger("relaykernel.supervisor")


class BadMessage(ValueError):
    """A frontend message that failed verification or parsing."""


def parse_object(frame: Any, part: str) -> dict[str, Any]:
    """A message part that must be a JSON object; BadMessage says which part is not.

    RecursionError is caught too: ``[[[[...]]]]`` nested a few thousand deep
    is valid JSON that the parser cannot finish.  Most parent headers and
    metadata are ``{}``: those skip the parser (it runs on every request)."""
    raw = frame.bytes
    if raw == b"{}":
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise BadMessage(f"{part} is not JSON: {str(e)[:200]}") from None
    if not isinstance(value, dict):
        raise BadMessage(f"{part} is not a JSON object but {type(value).__name__}")
    return value


class Incoming:
    """One verified frontend message, its JSON parts parsed once, its buffers the frames they came as.

    A plain class with slots rather than a dataclass: importing ``dataclasses``
    (it loads ``inspect``) costs the early step ~5 ms before kernel_info."""

    __slots__ = (
        "announced",
        "began_at",
        "channel",
        "content",
        "frames",
        "header",
        "idents",
        "metadata",
        "parent",
        "problem",
        "prompt_id",
        "started",
    )

    def __init__(self, channel: str, idents: list[bytes], header: dict[str, Any], frames: list[Any],
                 parent: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                 content: dict[str, Any] | None = None) -> None:
        self.channel = channel
        self.idents = idents
        self.header = header
        self.frames = frames  # the wire.VERIFIED layout (zmq.Frame): header, parent, metadata, content, buffers...
        self.parent: dict[str, Any] = {} if parent is None else parent
        self.metadata: dict[str, Any] = {} if metadata is None else metadata
        self.content: dict[str, Any] = {} if content is None else content
        #: why the signed message cannot be handled (a part is not a JSON object), else None
        self.problem: str | None = None
        #: busy was published for it (once, even if a new worker runs it again)
        self.announced = False
        #: the worker announced it began running this request (execute_input)
        self.started = False
        #: time.monotonic() when it became its lane's running request (flow.py)
        self.began_at = 0.0
        #: msg_id of this request's input_request that awaits its input_reply
        self.prompt_id: str | None = None

    def __repr__(self) -> str:
        return f"<Incoming {self.msg_type} {self.msg_id} on {self.channel}>"

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def msg_id(self) -> str:
        return str(self.header.get("msg_id", ""))

    @property
    def header_bytes(self) -> bytes:
        """The header as received: replies use it verbatim as their parent header."""
        header: bytes = self.frames[wire.VERIFIED.header].bytes
        return header

    @property
    def buffers(self) -> list[Any]:
        return self.frames[wire.VERIFIED.buffers:]


class Verifier:
    """Checks HMAC signatures and refuses replays, like jupyter_client's Session.

    A message that is not signed right, or whose header is not a JSON object
    with a ``msg_type``, is dropped: there is nothing to answer it with.  A
    signed message with a good header but a parent header, metadata or
    content that is not a JSON object comes out with ``problem`` set, so the
    loop can answer the request with an error instead of running it.  Buffers
    stay the zmq frames they arrived as.
    """

    def __init__(self, signer: Signer, history_size: int = 2**16) -> None:
        self._signer = signer
        # The last history_size signatures, by their first 64 bits: as ints they
        # take ~5 MB where the hex bytes took ~10 MB, half the supervisor's
        # memory.  A valid signature is an HMAC, so two different messages
        # share a prefix with probability 2**-64: only a replay matches.
        self._seen: set[int] = set()
        self._order: collections.deque[int] = collections.deque()
        self._history_size = history_size

    def waiting(self, sock: zmq.Socket, channel: str, budget: int = 64) -> Iterator[Incoming]:
        """The verified messages waiting on a frontend socket, at most ``budget``;
        bad ones are logged and dropped, never raised."""
        for _ in range(budget):
            try:
                raw = recv_frames(sock)
            except zmq.Again:
                return
            try:
                msg = self.verify(channel, raw)
            except BadMessage as e:
                log.warning("dropped a message on %s: %s", channel, e)
                continue
            yield msg

    def verify(self, channel: str, raw: list[Any]) -> Incoming:
        """Split and verify frames from a ROUTER socket; raise BadMessage."""
        split = next((i for i, f in enumerate(raw) if len(f) == len(DELIM) and f.bytes == DELIM), -1)
        if split < 0:
            raise BadMessage("no <IDS|MSG> delimiter")
        idents = [f.bytes for f in raw[:split]]
        at = wire.VERIFIED
        verified = raw[split + 2 :]  # after the delimiter and the signature
        if len(verified) < at.buffers:
            raise BadMessage(f"{len(raw) - split - 1} frames after the delimiter, expected at least {at.buffers + 1}")
        signature = raw[split + 1].bytes
        if self._signer.signs:
            if not signature:
                raise BadMessage("unsigned message")
            if not self._signer.verify(signature, [f.bytes for f in verified[: at.buffers]]):
                raise BadMessage("invalid signature")
            fingerprint = int(signature[:16], 16)  # verified above: hex digits
            if fingerprint in self._seen:
                raise BadMessage("replayed signature")
            self._remember(fingerprint)
        header = parse_object(verified[at.header], "header")
        msg_type = header.get("msg_type")
        if not isinstance(msg_type, str) or not msg_type:
            raise BadMessage("header has no msg_type string")
        if not isinstance(header.get("msg_id", ""), str):
            raise BadMessage("header's msg_id is not a string")
        msg = Incoming(channel, idents, header, verified)
        try:
            msg.parent = parse_object(verified[at.parent], "parent header")
            msg.metadata = parse_object(verified[at.metadata], "metadata")
            msg.content = parse_object(verified[at.content], "content")
        except BadMessage as e:
            msg.problem = str(e)
        else:
            if msg_type in wire.COMM_TYPES and not isinstance(msg.content.get("comm_id"), str):
                msg.problem = "its comm_id is not a string"
        return msg

    def _remember(self, fingerprint: int) -> None:
        self._seen.add(fingerprint)
        self._order.append(fingerprint)
        if len(self._order) > self._history_size:
            self._seen.discard(self._order.popleft())


def endpoint(transport: str, ip: str, port: int) -> str:
    if transport == "tcp":
        return f"tcp://{ip}:{port}"
    return f"ipc://{ip}-{port}"


def bind(sock: zmq.Socket, transport: str, ip: str, port: int) -> int:
    """Bind to the given port, or to a free one when port is 0; return the port."""
    if transport == "tcp":
        if port <= 0:
            return sock.bind_to_random_port(f"tcp://{ip}")
        sock.bind(endpoint(transport, ip, port))
        return port
    if port <= 0:
        port = 1
        while os.path.exists(f"{ip}-{port}"):
            port += 1
    sock.bind(endpoint(transport, ip, port))
    return port


#: Messages iopub queues for one subscriber that does not read.  Past it that
#: subscriber misses messages, so the limit must stay far above what a client
#: that reads, but lags under load, can have in flight: 1,000 lost pipelined comm
#: echoes and output lines on a busy 2-core host.  Print output leaves the worker
#: in batches of at most 64 KiB, so a frozen subscriber costs at most ~640 MB
#: of heavy output (small messages: a few MB); lower it on the command line.
IOPUB_QUEUE_LIMIT = 10_000
#: Largest inbound frame (bytes): a 50 MB comm buffer passes, a 200 MB frame
#: closes its connection before it is buffered.
MAX_MESSAGE_SIZE = 128 << 20


class TransportError(RuntimeError):
    """The connection file asks for a transport this kernel cannot provide."""


class SocketOptions:
    """How the kernel's sockets are set up before they bind: limits and CurveZMQ keys."""

    __slots__ = ("curve_public", "curve_secret", "iopub_queue_limit", "max_message_size")

    def __init__(self, iopub_queue_limit: int = IOPUB_QUEUE_LIMIT, max_message_size: int = MAX_MESSAGE_SIZE,
                 curve: tuple[bytes, bytes] | None = None) -> None:
        self.iopub_queue_limit = iopub_queue_limit  # 0: unlimited
        self.max_message_size = max_message_size  # 0: unlimited
        self.curve_public, self.curve_secret = curve or (b"", b"")

    @property
    def encrypted(self) -> bool:
        return bool(self.curve_secret)

    def apply_curve(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CurveZMQ server (before it binds) when keys were given:
        a client that does not know the server's key cannot connect at all."""
        if not self.encrypted:
            return
        try:
            sock.curve_secretkey = self.curve_secret
            sock.curve_publickey = self.curve_public
            sock.curve_server = True
        except zmq.ZMQError as e:  # checked in curve_keys; a libzmq refusal still must not go plaintext
            raise TransportError(f"cannot apply the connection file's CurveZMQ keys: {e}") from None

    def apply(self, sock: zmq.Socket) -> None:
        """All of these options, for a socket of the kernel that is about to bind."""
        self.apply_curve(sock)
        if sock.type == zmq.XPUB:
            sock.setsockopt(zmq.SNDHWM, self.iopub_queue_limit)
        else:
            sock.setsockopt(zmq.SNDHWM, 0)  # a reply waits for its client, never dropped
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size or -1)
        sock.setsockopt(zmq.RCVHWM, 0)


def curve_keys(info: dict[str, Any]) -> tuple[bytes, bytes] | None:
    """The CurveZMQ key pair a connection file carries (jupyter_client writes
    ``curve_publickey`` and ``curve_secretkey``, Z85 text), or None.

    Keys that cannot be used raise TransportError: a kernel the frontend
    asked to encrypt must not answer in plain text."""
    public, secret = info.get("curve_publickey"), info.get("curve_secretkey")
    if public is None and secret is None:
        return None
    if not public or not secret:
        missing = "curve_secretkey" if public else "curve_publickey"
        raise TransportError(f"the connection file has CurveZMQ keys but no {missing}")
    if not zmq.has("curve"):
        raise TransportError("the connection file asks for CurveZMQ encryption, but this pyzmq's "
                             "libzmq has no CURVE support (zmq.has('curve') is False); "
                             "install a pyzmq built with libsodium")
    pair = tuple(k.encode("ascii", "replace") if isinstance(k, str) else bytes(k) for k in (public, secret))
    for name, key in zip(("curve_publickey", "curve_secretkey"), pair):
        if len(key) != 40:
            raise TransportError(f"the connection file's {name} is not a 40-character Z85 key")
    try:
        derived = zmq.curve_public(pair[1])
    except (ValueError, zmq.ZMQError) as e:
        raise TransportError(f"the connection file's curve_secretkey is not a Z85 key: {e}") from None
    if derived != pair[0]:
        raise TransportError("the connection file's curve_publickey does not belong to its curve_secretkey")
    return pair[0], pair[1]


class KernelSockets:
    """The bound sockets of one kernel (heartbeat excluded: it has its own thread)."""

    def __init__(self, shell: zmq.Socket, control: zmq.Socket, stdin: zmq.Socket, iopub: zmq.Socket,
                 ports: dict[str, int]) -> None:
        self.shell, self.control, self.stdin, self.iopub = shell, control, stdin, iopub
        self.ports = ports

    @classmethod
    def bind_all(cls, ctx: zmq.Context, transport: str, ip: str, ports: dict[str, int],
                 options: SocketOptions | None = None) -> KernelSockets:
        options = options or SocketOptions()
        socks = {}
        bound = {}
        for name, kind in (("shell", zmq.ROUTER), ("control", zmq.ROUTER),
                           ("stdin", zmq.ROUTER), ("iopub", zmq.XPUB)):
            s = ctx.socket(kind)
            s.setsockopt(zmq.LINGER, 1000)
            options.apply(s)
            if kind == zmq.XPUB:  # every subscription, not only a topic's first, reaches Outbox.welcome
                s.setsockopt(zmq.XPUB_VERBOSE, 1)
            else:
                # A client's new connection takes its identity (the session id) over at
                # once, as in ipykernel (ipykernel#270).  jupyter_server replaces a
                # websocket's stale connection with new sockets of the same identity, and
                # KernelManager.client() reuses its session: without handover, a
                # reconnect that reaches the kernel before the old connection's close is
                # ignored for good (3 of 40 back-to-back reconnects; restarts hung in
                # the benchmarks).  The price, in plain text over TCP: a local process
                # that read the session id off iopub can take a client's replies, as with
                # ipykernel; ipc transport or CurveZMQ keys keep other users out.
                s.setsockopt(zmq.ROUTER_HANDOVER, 1)
            bound[name] = bind(s, transport, ip, ports.get(f"{name}_port", 0))
            socks[name] = s
        return cls(ports=bound, **socks)

    def close(self) -> None:
        for s in (self.shell, self.control, self.stdin, self.iopub):
            s.close(linger=1000)
