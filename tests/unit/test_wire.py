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


def test_a_message_without_large_buffers_is_one_frame():
    frames = wire.encode(wire.SHUTDOWN)
    assert len(frames) == 1
    assert wire.decode(frames).meta == {}
    assert len(wire.encode(wire.IOPUB, {"started": True}, [b"a"] * 7)) == 1


def test_decode_accepts_zmq_frames():
    lm = wire.decode([zmq.Frame(wire.encode(wire.READY, {"version": 1, "pid": 7})[0])])
    assert lm.meta["pid"] == 7


@pytest.mark.parametrize("frames", [
    [],
    [b"done"],
    [b"\x01\x00\x00\x00" + (4).to_bytes(8, "little", signed=True) + b"done"],  # no meta
    [wire.encode(b"done")[0].replace(b"done", b"don")],  # sizes do not add up
])
def test_malformed_messages_raise_wire_error(frames):
    with pytest.raises(wire.WireError):
        wire.decode(frames)


@pytest.mark.parametrize("meta", [b"{not json", b"[1, 2]"])
def test_bad_meta_raises_wire_error(meta):
    frame = b"\x02\x00\x00\x00" + (4).to_bytes(8, "little", signed=True) + len(meta).to_bytes(8, "little", signed=True)
    with pytest.raises(wire.WireError, match="meta"):
        wire.decode([frame + b"done" + meta])


def test_small_frames_are_packed_and_large_ones_stay_separate_in_order():
    big = bytes(range(256)) * 1024  # 256 KiB
    payload = [b"topic", memoryview(b"header"), big, zmq.Frame(b"content"), b"", bytearray(b"z")]
    frames = wire.encode(wire.COMM, {"comm_id": "c"}, payload)
    assert len(frames) == 2  # packed, then the one large buffer
    assert frames[1] is big  # by reference, not copied
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


def _table(*sizes: int) -> bytes:
    kind_and_meta = (4).to_bytes(8, "little", signed=True) + (0).to_bytes(8, "little", signed=True)
    return ((2 + len(sizes)).to_bytes(4, "little") + kind_and_meta
            + b"".join(s.to_bytes(8, "little", signed=True) for s in sizes) + b"done")


@pytest.mark.parametrize("packed", [
    b"",  # no count
    b"\x03\x00\x00\x00" + (3).to_bytes(8, "little", signed=True),  # count says 3, one size
    _table(9) + b"abc",  # size past the end
    _table(1) + b"abc",  # bytes left over
    _table(-1),  # names a frame that is missing
    _table(-7),  # nonsense size
])
def test_malformed_size_tables_raise_wire_error(packed):
    with pytest.raises(wire.WireError):
        wire.decode([packed])


def test_extra_frames_beyond_the_size_table_raise_wire_error():
    frames = wire.encode(wire.IOPUB, None, [b"a"])
    with pytest.raises(wire.WireError):
        wire.decode([*frames, b"stray"])
