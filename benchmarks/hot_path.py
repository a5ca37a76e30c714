"""The supervisor's per-request Python work with warm caches, for comparison with the timeline.

    python -m benchmarks.hot_path [-n 2000]

Queues ``n`` signed ``comm_msg`` requests (made by jupyter_client's
``Session``, as a frontend's) on an inproc socket, then times, per request,
the three steps the supervisor runs on its shell path before the worker gets
the request: ``wire.recv_frames`` off the ROUTER socket, ``Verifier.verify``
(HMAC, replay check, header parsed) and ``wire.encode`` of the link frame.
Every request is checked to verify.  Run back to back like this, the caches
are warm; ``python -m benchmarks.echo_timeline`` shows the same steps on a
real echo, where the supervisor has just woken up.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

import zmq
from jupyter_client.session import Session

from relaykernel import wire
from relaykernel.signing import Signer
from relaykernel.supervisor.sockets import Verifier


def measure(n: int) -> dict[str, float]:
    """Microseconds per request for each step."""
    key = uuid.uuid4().hex.encode()
    session = Session(key=key)
    ctx = zmq.Context()
    front, shell = ctx.socket(zmq.DEALER), ctx.socket(zmq.ROUTER)
    try:
        shell.bind("inproc://hot-path")
        front.connect("inproc://hot-path")
        for i in range(n):
            session.send(front, session.msg("comm_msg", {"comm_id": "c" * 32, "data": {"seq": i}}))
        raws = []
        deadline = time.monotonic() + 30
        t0 = time.perf_counter()
        while len(raws) < n:
            try:
                raws.append(wire.recv_frames(shell))
            except zmq.Again:
                if time.monotonic() > deadline:
                    raise SystemExit(f"hot_path: {len(raws)}/{n} requests arrived") from None
        t1 = time.perf_counter()
        verifier = Verifier(Signer(key))
        verified = [verifier.verify("shell", raw) for raw in raws]
        t2 = time.perf_counter()
        for msg in verified:
            wire.encode(wire.REQUEST, None, msg.frames)
        t3 = time.perf_counter()
        if [m.content["data"]["seq"] for m in verified] != list(range(n)):
            raise SystemExit("hot_path: requests arrived out of order")
    finally:
        front.close(0)
        shell.close(0)
        ctx.term()
    return {"recv_frames": (t1 - t0) / n * 1e6, "verify": (t2 - t1) / n * 1e6,
            "encode": (t3 - t2) / n * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="requests")
    a = ap.parse_args(argv)
    steps = measure(a.n)
    for name, us in steps.items():
        print(f"  {name:12s} {us:6.1f} us per request")
    print(f"  {'total':12s} {sum(steps.values()):6.1f} us per request (n={a.n}, warm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
