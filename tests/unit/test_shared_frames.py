"""A REQUEST's large buffers through the shared region (relaykernel/transport.py, issue 23).

Both ends in one process: the supervisor's SharedOut places buffers in its memfd,
the worker's SharedIn maps it through /proc/<pid>/fd and copies them out into
buffers of its own, which it reuses only while no view of them is held.
"""

from __future__ import annotations

import os

import pytest
import zmq

from relaykernel import transport

pytestmark = pytest.mark.skipif(not (hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")),
                                reason="needs memfd_create and /proc")

MB = 1 << 20


def _request(*buffers: bytes) -> list:
    return [b"{}", b"{}", b"{}", b"{}", *buffers]


def test_large_buffers_cross_byte_identical_and_small_ones_stay_in_the_frames():
    out, into = transport.SharedOut(), transport.SharedIn()
    big, small, other = os.urandom(3 * MB + 5), b"x" * 100, os.urandom(transport.SHARED_MIN)
    frames = _request(big, small, zmq.Frame(other))
    owner = object()
    try:
        spec = out.place(frames, 4, owner)
        assert spec is not None
        assert frames[4] == b"" and frames[5] == small and frames[6] == b""  # only the large ones moved
        assert [place[0] for place in spec["frames"]] == [4, 6]
        got = into.resolve({"shared": spec}, frames)
        assert bytes(got[4]) == big and bytes(got[5]) == small and bytes(got[6]) == other
    finally:
        into.drop()
        out.close()


def test_one_request_at_a_time_until_its_done():
    out = transport.SharedOut()
    first, second = object(), object()
    try:
        assert out.place(_request(os.urandom(2 * MB)), 4, first) is not None
        assert out.place(_request(os.urandom(2 * MB)), 4, second) is None  # busy: the link takes it
        out.release(second)  # not the owner: still busy
        assert out.place(_request(os.urandom(2 * MB)), 4, second) is None
        out.release(first)
        assert out.place(_request(os.urandom(2 * MB)), 4, second) is not None
        assert out.place(_request(b"small"), 4, object()) is None
    finally:
        out.close()


def test_the_worker_reuses_its_buffer_only_when_no_view_is_held():
    out, into = transport.SharedOut(), transport.SharedIn()
    try:
        def deliver(payload: bytes) -> memoryview:
            owner = object()
            frames = _request(payload)
            spec = out.place(frames, 4, owner)
            assert spec is not None
            view = into.resolve({"shared": spec}, frames)[4]
            out.release(owner)
            return view

        a = os.urandom(4 * MB)
        kept = deliver(a)  # user code keeps this one (a widget holding its buffer)
        b = os.urandom(4 * MB)
        second = deliver(b)
        assert bytes(kept) == a, "a buffer user code holds was overwritten by the next one"
        assert bytes(second) == b
        second_obj = second.obj
        second.release()  # no view of the second left: the next one lands in it (warm pages)
        c = os.urandom(3 * MB)
        third = deliver(c)
        assert third.obj is second_obj
        assert bytes(third) == c and bytes(kept) == a
    finally:
        into.drop()
        out.close()


def test_the_region_grows_and_the_worker_maps_it_again():
    out, into = transport.SharedOut(), transport.SharedIn()
    try:
        for size in (2 * MB, 9 * MB, 3 * MB):
            owner, payload = object(), os.urandom(size)
            frames = _request(payload)
            spec = out.place(frames, 4, owner)
            assert spec is not None
            assert bytes(into.resolve({"shared": spec}, frames)[4]) == payload
            out.release(owner)
    finally:
        into.drop()
        out.close()
