"""libzmq's IO threads as batch threads, so they stop interrupting the Python thread.

Every zmq message a process sends or receives passes through its context's
IO thread (``ZMQbg/IO/0``): a send puts the message in a pipe and wakes that
thread to write it to the ipc or tcp socket.  The woken thread has slept, so
Linux's scheduler lets it preempt the Python thread that woke it on the spot,
and it wakes again for the next message sent a few microseconds later.  On a
small machine these switches are most of a message's cost: the supervisor
and the worker each pay several per relayed request.

Under ``SCHED_BATCH`` a woken thread does not preempt the running one (it
runs on an idle core at once, or when the Python thread blocks, or at the
next scheduler tick), so a burst of sends costs one wake-up and the messages
leave together.  Same nice level, same share of the CPU; only the wake-up
preemption goes.  On a 2-core VM this took the context switches per comm
echo in supervisor and worker from ~15 to ~11 and pipelined echoes up by about
a quarter, with the sequential latency unchanged (benchmarks/README.md).

The policy is set from Python on the threads' ids, not with libzmq's
``ZMQ_THREAD_SCHED_POLICY`` option: libzmq aborts the process when it cannot
apply that option (a container that forbids ``sched_setscheduler``), and here
a refusal only means the threads keep the default policy.
"""

from __future__ import annotations

import os
import time

from .lazylog import LazyLogger

log = LazyLogger("relaykernel")

#: libzmq names its IO threads "ZMQbg/IO/<n>" (its reaper thread "ZMQbg/Reaper").
IO_THREAD_PREFIX = "ZMQbg/IO/"


def batch_io_threads(wait: float = 0.02, expect: int = 1) -> int:
    """Put this process's libzmq IO threads under SCHED_BATCH; returns how many.

    Call it after the contexts have made their first socket (libzmq starts its
    threads then).  A new thread names itself a moment after it starts, so
    this looks again for up to ``wait`` seconds until ``expect`` are named (one
    per context: a worker has its link's and pyzmq's garbage collector's, and
    the second may name itself after the first).  A no-op off Linux or where
    the scheduler call is refused."""
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None or not os.path.isdir("/proc/self/task"):
        return 0
    deadline = time.monotonic() + wait
    while True:
        tids = _io_thread_ids()
        if len(tids) >= expect or time.monotonic() >= deadline:
            break
        time.sleep(0.002)
    changed = 0
    for tid in tids:
        try:
            os.sched_setscheduler(tid, batch, os.sched_param(0))
            changed += 1
        except OSError as e:
            log.debug("libzmq IO thread %s keeps its scheduling policy: %s", tid, e)
    return changed


def _io_thread_ids() -> list[int]:
    tids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith(IO_THREAD_PREFIX):
                    tids.append(int(tid))
        except OSError:  # the thread ended meanwhile
            pass
    return tids
