"""A request's large buffers reach the worker through shared memory (issue 23).

relaykernel only: the supervisor copies a comm_msg's buffers of 1 MiB or more into
a memfd the worker maps, and the worker copies them out into buffers of its own
(relaykernel/transport.py).  What user code gets must be byte-identical, stay intact
while it holds it, and survive the worker's death and a snapshot's rollback.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.kernel.comm_helpers import PRELUDE, comm_msg, comm_open, comms_of, handled, new_comm_id, only
from tests.kernel.helpers import execute, execute_ok, relaykernel_only, stream_text, wait_for

pytestmark = relaykernel_only

MB = 1 << 20

#: Target 'keep': every buffer it gets is kept (as a widget keeps its value), and the
#: echo names the sha256 of each kept one, read when the echo is sent.
KEEP_TARGET = PRELUDE + """
import hashlib
kept = []
def _keep_target(comm, open_msg):
    def _on_msg(msg):
        kept.extend(msg['buffers'])
        comm.send({'kept': [hashlib.sha256(b).hexdigest() for b in kept]}, buffers=msg['buffers'])
    comm.on_msg(_on_msg)
comm_manager.register_target('keep', _keep_target)
"""


def _open_keep(kc) -> str:
    execute_ok(kc, KEEP_TARGET)
    comm_id = new_comm_id()
    assert not comms_of(handled(kc, comm_open(kc, comm_id, "keep")), "comm_close")
    return comm_id


def _echo(kc, comm_id: str, buffers: list[bytes]) -> dict:
    echo = only(comms_of(handled(kc, comm_msg(kc, comm_id, {}, buffers=buffers), timeout=60), "comm_msg", comm_id))
    assert [bytes(b) for b in echo["buffers"]] == buffers
    return echo


def _maps_region(pid: int) -> bool:
    return "relaykernel-link" in Path(f"/proc/{pid}/maps").read_text()


def test_large_buffers_go_through_shared_memory_and_stay_intact_while_held(kernel) -> None:
    kc = kernel.kc
    comm_id = _open_keep(kc)
    sent: list[bytes] = []
    for size in (4 * MB, 4 * MB + 3, 2 * MB):
        batch = [os.urandom(size), b"small", os.urandom(MB)]
        sent.extend(batch)
        echo = _echo(kc, comm_id, batch)
        # every buffer the target kept is still what was sent, after the next ones came
        assert echo["content"]["data"]["kept"] == [hashlib.sha256(b).hexdigest() for b in sent]
    assert _maps_region(kernel.worker_pid()), "the worker did not get its large buffers through shared memory"


def test_large_buffers_reach_a_worker_that_replaced_a_dead_one(kernel) -> None:
    kc = kernel.kc
    comm_id = _open_keep(kc)
    _echo(kc, comm_id, [os.urandom(3 * MB)])
    old = kernel.worker_pid()
    reply, _ = execute(kc, "import os; os._exit(3)")
    assert reply["content"]["status"] == "error"
    wait_for(lambda: kernel.worker_pid() != old, 30)
    comm_id = _open_keep(kc)  # the restored (or new) worker: a comm of its own
    for size in (3 * MB, 5 * MB):
        _echo(kc, comm_id, [os.urandom(size)])
    assert _maps_region(kernel.worker_pid())


def test_the_first_large_buffer_is_not_held_for_the_workers_life(kernel) -> None:
    """pyzmq's garbage collector thread starts outside any request (worker/link.py): had
    it started in the comm handler that sent the first large buffer, it would record that
    request as its parent and hold it, buffers and all, as long as the worker lives."""
    kc = kernel.kc
    comm_id = _open_keep(kc)
    execute_ok(kc, "kept.clear()")
    _echo(kc, comm_id, [os.urandom(2 * MB)])
    execute_ok(kc, "kept.clear()")
    _, iopub = execute_ok(kc, "from zmq.utils.garbage import gc as _zgc\n"
                              "print('held:', getattr(_zgc.thread, '_relaykernel_parent', None) is not None)")
    assert stream_text(iopub).strip() == "held: False"
