"""Signing and packing Jupyter wire messages; shared by the supervisor and the worker.

The messaging spec signs ``header, parent_header, metadata, content`` with an
HMAC of the connection file's key, and every message carries a header with a
unique ``msg_id`` and the sender's session id.  jupyter_client's ``Session``
does exactly this, but importing it loads all of ``jupyter_client`` (its
clients, asyncio, tornado): ~130 ms and several MB in a supervisor that must
answer kernel_info within tens of milliseconds of launch and stay small, and
again in every worker start.  This module is that subset, on the standard
library alone.  ``tests/unit/test_signing.py`` checks it against ``Session``
in both directions (we sign, Session verifies; Session signs, we verify).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import numbers
import os
import warnings
from binascii import b2a_base64
from collections.abc import Iterable
from datetime import date, datetime, timezone
from typing import Any

#: The ``<IDS|MSG>`` delimiter between routing identities and the message.
DELIM = b"<IDS|MSG>"
JUPYTER_PROTOCOL_VERSION = "5.5"


def new_uuid() -> str:
    """A random (version 4) UUID as text, like ``str(uuid.uuid4())``: session ids
    and keys, made before the supervisor can afford to import ``uuid`` (~2.5 ms)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def json_default(obj: Any) -> Any:
    """What ``json.dumps`` cannot encode on its own, encoded as Session does:
    dates as ISO 8601 (UTC as ``Z``; naive ones are local time), bytes as base64, numpy-like numbers as
    Python numbers, other iterables as lists."""
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            obj = obj.astimezone()  # naive means local time, as Session reads it
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return b2a_base64(obj, newline=False).decode("ascii")
    if isinstance(obj, Iterable):
        return list(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    raise TypeError(f"{obj!r} is not JSON serializable")


def _finite(obj: Any) -> Any:
    """A copy of obj with NaN and infinities as their repr, which strict JSON allows."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def pack(obj: Any) -> bytes:
    """Compact, strict JSON as UTF-8 (no NaN: browsers' JSON.parse rejects it)."""
    try:
        text = json.dumps(obj, default=json_default, ensure_ascii=False, allow_nan=False)
    except ValueError:
        warnings.warn("a message contained NaN or infinity; sent as strings", stacklevel=2)
        text = json.dumps(_finite(obj), default=json_default, ensure_ascii=False, allow_nan=False)
    return text.encode("utf8", errors="surrogateescape")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class Signer:
    """Signs with one kernel's key and stamps headers with one session id.

    The supervisor and its workers share the key and the session id, so the
    frontend sees a single kernel session across worker replacements; message
    ids stay unique because they carry the sender's pid and a counter.
    """

    def __init__(self, key: bytes, signature_scheme: str = "hmac-sha256", session_id: str = "",
                 username: str = "kernel") -> None:
        algorithm, _, digest = signature_scheme.partition("-")
        if algorithm != "hmac" or digest not in hashlib.algorithms_available:
            raise ValueError(f"unsupported signature scheme {signature_scheme!r}")
        self._hmac = hmac.new(key, digestmod=digest) if key else None
        self.key, self.signature_scheme, self.session_id = key, signature_scheme, session_id
        id_prefix = f"{session_id}_{os.getpid()}_"
        self._count = 0
        # every header is this text with msg_id, msg_type and date filled in: ~3 us
        # a message where json.dumps of a dict takes ~10 (and the supervisor
        # signs two status messages for every request it relays)
        fixed = {"username": username, "session": session_id, "version": JUPYTER_PROTOCOL_VERSION}
        self._template = ('{"msg_id": ' + json.dumps(id_prefix)[:-1].replace("%", "%%")
                          + '%d", "msg_type": %s, "date": "%s", ' + json.dumps(fixed)[1:].replace("%", "%%"))
        self._quoted_types: dict[str, str] = {}

    @property
    def signs(self) -> bool:
        """False with an empty key: messages then carry an empty signature."""
        return self._hmac is not None

    def sign(self, parts: Iterable[bytes]) -> bytes:
        """The hex HMAC of header, parent, metadata and content (b'' without a key)."""
        if self._hmac is None:
            return b""
        h = self._hmac.copy()
        for part in parts:
            h.update(part)
        return h.hexdigest().encode()

    def verify(self, signature: bytes, parts: Iterable[bytes]) -> bool:
        """Whether signature is the one this key gives parts (constant-time compare)."""
        if self._hmac is None:
            return True
        return hmac.compare_digest(signature, self.sign(parts))

    def packed_header(self, msg_type: str) -> bytes:
        """A new message header, as JSON (what :meth:`frames` sends)."""
        quoted = self._quoted_types.get(msg_type)
        if quoted is None:
            quoted = self._quoted_types[msg_type] = json.dumps(msg_type)
        self._count += 1
        return (self._template % (self._count, quoted, now_iso())).encode()

    def frames(self, msg_type: str, content: dict[str, Any] | bytes, parent: bytes | None,
               metadata: dict[str, Any] | bytes | None = None) -> list[bytes]:
        """Signed wire frames from the delimiter on: ``<IDS|MSG>, hmac, header,
        parent, metadata, content``.  ``parent`` is the request's header as it
        arrived (bytes), reused verbatim; content and metadata may come packed."""
        parts = [self.packed_header(msg_type), parent or b"{}",
                 metadata if isinstance(metadata, bytes) else (pack(metadata) if metadata else b"{}"),
                 content if isinstance(content, bytes) else pack(content)]
        return [DELIM, self.sign(parts), *parts]
