"""The worker's end of the link (relaykernel/worker/link.py), against a real PAIR peer."""

from __future__ import annotations

import zmq

from relaykernel import wire
from relaykernel.worker.link import Link
from tests.kernel.helpers import wait_for


def test_an_undecodable_message_is_reported_not_just_logged(tmp_path):
    """A message from the supervisor the worker cannot decode is dropped, and the
    worker is told why (main.py writes it to the user's stderr), then serving goes on."""
    ctx = zmq.Context()
    supervisor = ctx.socket(zmq.PAIR)
    supervisor.bind(f"ipc://{tmp_path}/link")
    link = Link(ctx, f"ipc://{tmp_path}/link")
    told: list[str] = []
    link.on_malformed = told.append
    try:
        supervisor.send_multipart([b"\x05\x00\x00\x00garbage"])
        supervisor.send_multipart(wire.encode(wire.SHUTDOWN))
        lm = wait_for(lambda: link._receive_nowait(None), 10, what="the SHUTDOWN after the garbage")
        assert lm.kind == wire.SHUTDOWN
        assert len(told) == 1 and "size table" in told[0], told
    finally:
        link._pair.close(0)
        supervisor.close(0)
        ctx.term()
