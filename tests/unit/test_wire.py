"""The link protocol: encode/decode round trips and one error type for bad input."""

import pytest
import zmq

from relaykernel import wire


def test_round_trip_keeps_payload_frames_undecoded():
    frames = wire.encode(wire.DONE, {"status": "ok", "execution_count": 3}, [b"a", b"\x00\xff"])
    lm = wire.decode(frames)
    assert lm.kind == wire.DONE
    assert lm.meta == {"status": "ok", "execution_count": 3}
    assert list(lm.payload) == [b"a", b"\x00\xff"]


def test_empty_meta_is_empty_bytes_on_the_wire():
    assert wire.encode(wire.SHUTDOWN)[1] == b""
    assert wire.decode(wire.encode(wire.SHUTDOWN)).meta == {}


def test_decode_accepts_zmq_frames():
    lm = wire.decode([zmq.Frame(wire.READY), zmq.Frame(b'{"version": 1, "pid": 7}')])
    assert lm.meta["pid"] == 7


@pytest.mark.parametrize("frames", [[], [b"done"], [b"done", b"{not json"], [b"done", b"[1, 2]"]])
def test_malformed_messages_raise_wire_error(frames):
    with pytest.raises(wire.WireError):
        wire.decode(frames)
