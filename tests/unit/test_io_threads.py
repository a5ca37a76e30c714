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


TWO_CONTEXTS = r"""
import os, threading, time, zmq
from relaykernel.io_threads import IO_THREAD_PREFIX, batch_io_threads
first = zmq.Context()
a = first.socket(zmq.PAIR)
while not any(open(f"/proc/self/task/{t}/comm").read().startswith(IO_THREAD_PREFIX)
              for t in os.listdir("/proc/self/task")):
    time.sleep(0.001)  # the first context's IO thread is named: a plain call would stop here
second = zmq.Context()
late = threading.Timer(0.05, lambda: second.socket(zmq.PAIR))  # as pyzmq's garbage collector starts later
late.start()
changed = batch_io_threads(wait=2.0, expect=2)
late.join()
print(changed, sorted(os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")
                      if open(f"/proc/self/task/{t}/comm").read().startswith(IO_THREAD_PREFIX)))
os._exit(0)
"""


@needs_linux_sched
def test_a_second_context_started_a_moment_later_is_waited_for():
    """A worker has two contexts (its link's, pyzmq's garbage collector's), whose IO
    threads name themselves at different moments: with ``expect=2`` the call waits for
    both, where stopping at the first named one left the other at the default policy
    (a CI failure: the worker's IO threads [SCHED_BATCH, SCHED_OTHER])."""
    result = subprocess.run([sys.executable, "-c", TWO_CONTEXTS], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 1) == ["2", f"[{os.SCHED_BATCH}, {os.SCHED_BATCH}]\n"], result.stdout
