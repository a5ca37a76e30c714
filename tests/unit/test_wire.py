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


def _big_meta(size: int = 3 * wire.PACK_LIMIT) -> dict:
    """A meta whose JSON is well over PACK_LIMIT, like ADOPT's with many widgets' states."""
    return {"comms": [{"content": {"comm_id": str(i), "data": {"value": "v" * 1000}},
                       "metadata": {}, "buffers": 0} for i in range(size // 1000)]}


@pytest.mark.parametrize("payload", [
    [],
    [b"small", b"x" * (wire.PACK_LIMIT + 5)],  # a large buffer too, separate as before
    [b"y" * (2 * wire.PACK_LIMIT), b"z" * wire.PACK_LIMIT],
], ids=["meta-only", "small-and-large-frames", "large-frames"])
def test_a_meta_of_any_size_round_trips(payload):
    meta = _big_meta()
    frames = wire.encode(wire.ADOPT, meta, payload)
    large = [f for f in payload if len(f) >= wire.PACK_LIMIT]
    assert len(frames) == 1 + len(large)
    assert all(sent is buffer for sent, buffer in zip(frames[1:], large))  # still by reference
    lm = wire.decode(frames)
    assert lm.kind == wire.ADOPT
    assert lm.meta == meta
    assert [wire.as_bytes(f) for f in lm.payload] == payload


@pytest.mark.parametrize("direction", ["supervisor-to-worker", "worker-to-supervisor"])
@pytest.mark.parametrize("with_buffers", [False, True], ids=["no-buffers", "buffers"])
def test_a_big_meta_crosses_the_link_both_ways(tmp_path, direction, with_buffers):
    """Both ends of a PAIR link, as the supervisor (binds) and the worker (connects)."""
    ctx = zmq.Context()
    supervisor, worker = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        supervisor.bind(f"ipc://{tmp_path}/link")
        worker.connect(f"ipc://{tmp_path}/link")
        sender, receiver = (supervisor, worker) if direction == "supervisor-to-worker" else (worker, supervisor)
        meta = _big_meta(5 * wire.PACK_LIMIT)
        payload = [b"b" * (wire.PACK_LIMIT + 1), b"tiny"] if with_buffers else []
        kind = wire.ADOPT if direction == "supervisor-to-worker" else wire.COMM
        wire.send_frames(sender, wire.encode(kind, meta, payload))
        assert receiver.poll(5000)
        lm = wire.decode(wire.recv_frames(receiver))
        assert (lm.kind, lm.meta) == (kind, meta)
        assert [wire.as_bytes(f) for f in lm.payload] == payload
    finally:
        supervisor.close(0)
        worker.close(0)
        ctx.term()
