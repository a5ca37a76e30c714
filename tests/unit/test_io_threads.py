"""relaykernel.io_threads: libzmq's IO threads under SCHED_BATCH, refusals harmless."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

needs_linux_sched = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH") or not os.path.isdir("/proc/self/task"),
                                       reason="SCHED_BATCH and /proc/self/task are Linux's")

PROBE = r"""
import os, sys, zmq
from relaykernel.io_threads import IO_THREAD_PREFIX, batch_io_threads
ctx = zmq.Context()
s = ctx.socket(zmq.PAIR)  # libzmq starts its threads with the first socket
if sys.argv[1] == "refuse":
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")
    os.sched_setscheduler = refuse
changed = batch_io_threads()
policies = {}
for tid in os.listdir("/proc/self/task"):
    name = open(f"/proc/self/task/{tid}/comm").read().strip()
    policies[name] = os.sched_getscheduler(int(tid))
s.close(); ctx.term()
io = [p for n, p in policies.items() if n.startswith(IO_THREAD_PREFIX)]
others = [p for n, p in policies.items() if not n.startswith(IO_THREAD_PREFIX)]
print(changed, io, others)
"""


def _probe(mode: str) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@needs_linux_sched
def test_the_io_thread_becomes_batch_and_nothing_else_changes():
    changed, io, others = _probe("apply").split(" ", 2)
    assert int(changed) >= 1
    assert io == f"[{', '.join([str(os.SCHED_BATCH)] * int(changed))}]"
    assert str(os.SCHED_BATCH) not in others  # the main thread and the reaper keep theirs


@needs_linux_sched
def test_a_refused_policy_change_leaves_the_process_running():
    changed, io, _others = _probe("refuse").split(" ", 2)
    assert changed == "0"
    assert str(os.SCHED_BATCH) not in io
