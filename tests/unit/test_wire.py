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


def test_small_frames_are_packed_and_large_ones_stay_separate_in_order():
    big = bytes(range(256)) * 1024  # 256 KiB
    payload = [b"topic", memoryview(b"header"), big, zmq.Frame(b"content"), b"", bytearray(b"z")]
    frames = wire.encode(wire.COMM, {"comm_id": "c"}, payload)
    assert len(frames) == 4  # kind, meta, layout, the one large buffer
    assert frames[3] is big  # by reference, not copied
    lm = wire.decode(frames)
    assert [bytes(f) for f in lm.payload] == [b"topic", b"header", big, b"content", b"", b"z"]


def test_packed_frames_cross_a_socket(tmp_path):
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind(f"ipc://{tmp_path}/link")
        b.connect(f"ipc://{tmp_path}/link")
        big = b"x" * (wire.PACK_LIMIT + 1)
        wire.send_frames(a, wire.encode(wire.IOPUB, None, [b"t", b"<IDS|MSG>", big, b"end"]))
        assert b.poll(5000)
        lm = wire.decode(b.recv_multipart(copy=False))
        assert lm.kind == wire.IOPUB
        assert [wire.as_bytes(f) for f in lm.payload] == [b"t", b"<IDS|MSG>", big, b"end"]
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


@pytest.mark.parametrize("layout", [
    b"",  # no count
    b"\x02\x00\x00\x00" + (3).to_bytes(8, "little", signed=True),  # count says 2, one size
    b"\x01\x00\x00\x00" + (9).to_bytes(8, "little", signed=True) + b"abc",  # size past the end
    b"\x01\x00\x00\x00" + (1).to_bytes(8, "little", signed=True) + b"abc",  # bytes left over
    b"\x01\x00\x00\x00" + (-1).to_bytes(8, "little", signed=True),  # names a frame that is missing
    b"\x01\x00\x00\x00" + (-7).to_bytes(8, "little", signed=True),  # nonsense size
])
def test_malformed_layouts_raise_wire_error(layout):
    with pytest.raises(wire.WireError):
        wire.decode([wire.IOPUB, b"", layout])


def test_extra_frames_beyond_the_layout_raise_wire_error():
    frames = wire.encode(wire.IOPUB, None, [b"a"])
    with pytest.raises(wire.WireError):
        wire.decode([*frames, b"stray"])
