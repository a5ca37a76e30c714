"""relaykernel.signing against jupyter_client's Session, in both directions."""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timezone

import pytest
import zmq
from jupyter_client.session import Session

from relaykernel.signing import DELIM, Signer, pack
from relaykernel.supervisor.sockets import BadMessage, Verifier

KEY = uuid.uuid4().hex.encode()


class _Frame:
    """Stands in for a zmq.Frame received with copy=False."""

    def __init__(self, data: bytes) -> None:
        self.bytes = data

    def __len__(self) -> int:
        return len(self.bytes)


def _frames(parts: list[bytes]) -> list[_Frame]:
    return [_Frame(p) for p in parts]


@pytest.mark.parametrize("scheme", ["hmac-sha256", "hmac-sha512"])
def test_session_accepts_what_we_sign(scheme: str) -> None:
    ours = Signer(KEY, scheme, session_id="abc")
    parent = Session(key=KEY, signature_scheme=scheme).msg_header("execute_request")
    frames = ours.frames("execute_result", {"data": {"text/plain": "2"}, "n": 1},
                         pack(parent), metadata={"m": True})
    theirs = Session(key=KEY, signature_scheme=scheme)
    _, body = theirs.feed_identities(frames)
    msg = theirs.deserialize(body)  # raises on a bad signature
    assert msg["header"]["msg_type"] == "execute_result"
    assert msg["header"]["session"] == "abc"
    assert msg["header"]["username"] == "kernel"
    assert msg["header"]["version"] == "5.5"
    assert msg["header"]["date"].tzinfo is not None
    assert msg["parent_header"]["msg_id"] == parent["msg_id"]
    assert msg["metadata"] == {"m": True}
    assert msg["content"] == {"data": {"text/plain": "2"}, "n": 1}


def test_we_accept_what_session_signs_and_refuse_tampering_and_replays() -> None:
    theirs = Session(key=KEY)
    wire = theirs.serialize(theirs.msg("execute_request", {"code": "1+1"}))
    verifier = Verifier(Signer(KEY))
    msg = verifier.verify("shell", _frames([b"client-id", *wire]))
    assert msg.idents == [b"client-id"]
    assert msg.msg_type == "execute_request"
    assert msg.content == {"code": "1+1"}
    with pytest.raises(BadMessage, match="replayed"):
        verifier.verify("shell", _frames(wire))
    tampered = theirs.serialize(theirs.msg("execute_request", {"code": "1+1"}))
    tampered[-1] = b'{"code": "import os"}'
    with pytest.raises(BadMessage, match="invalid signature"):
        verifier.verify("shell", _frames(tampered))
    other_key = Session(key=b"not-the-key")
    with pytest.raises(BadMessage, match="invalid signature"):
        verifier.verify("shell", _frames(other_key.serialize(other_key.msg("kernel_info_request"))))
    unsigned = Session(key=b"")
    with pytest.raises(BadMessage, match="unsigned"):
        verifier.verify("shell", _frames(unsigned.serialize(unsigned.msg("kernel_info_request"))))


def test_empty_key_means_no_signature_either_way() -> None:
    ours = Signer(b"")
    frames = ours.frames("status", {"execution_state": "idle"}, None)
    assert frames[:2] == [DELIM, b""]
    Session(key=b"").deserialize(frames[1:])


def test_message_ids_are_unique_and_carry_the_session() -> None:
    ours = Signer(KEY, session_id="sess")
    ids = {json.loads(ours.packed_header("status"))["msg_id"] for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("sess_") for i in ids)


def test_pack_encodes_like_session() -> None:
    value = {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "raw": b"\x00\x01",
             "t": (1, 2), "s": "é"}
    assert json.loads(pack(value)) == json.loads(Session().pack(value))
    with pytest.warns(UserWarning, match="NaN"):
        assert json.loads(pack({"x": math.nan, "y": [math.inf]})) == {"x": "nan", "y": ["inf"]}
    with pytest.raises(TypeError):
        pack({"x": object()})


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported signature scheme"):
        Signer(KEY, "rsa-sha256")


def test_frames_travel_through_zmq_unchanged() -> None:
    """What the supervisor and worker actually do: frames over a socket, then Session reads them."""
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        a.send_multipart(Signer(KEY, session_id="s").frames("stream", {"name": "stdout", "text": "hi\n"}, None))
        assert b.poll(5000)
        received = b.recv_multipart()
        assert Session(key=KEY).deserialize(received[1:])["content"]["text"] == "hi\n"
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


def test_headers_survive_odd_names() -> None:
    ours = Signer(KEY, session_id='s%s"\\', username="100%")
    for msg_type in ("status", 'odd"type%d'):
        frames = ours.frames(msg_type, {}, None)
        header = Session(key=KEY).deserialize(frames[1:])["header"]
        assert header["msg_type"] == msg_type
        assert header["session"] == 's%s"\\'
        assert header["username"] == "100%"
