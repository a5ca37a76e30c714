"""How the kernel's processes get memory for large message buffers (glibc only).

A 50 MB comm buffer crosses three process boundaries in relaykernel (frontend
to supervisor, supervisor to worker and back) where ipykernel has one.  Each
receive is a fresh allocation by libzmq's IO thread, and glibc serves any
allocation over 32 MB with a new ``mmap``: the kernel then zero-fills the
buffer's 12,800 pages one fault at a time as the socket data lands.  Measured
here (2-core VM), a 50 MB round trip between two processes over ipc took
~90 ms, half of it those page faults; the copies themselves are the rest.

* The supervisor only ever holds messages, so it keeps freed memory in its
  heap (:func:`keep_freed_memory`): the next large buffer lands in pages that
  are already mapped.  One arena for all its threads, because libzmq's IO
  thread allocates every received message and a per-thread arena stops at
  64 MB heaps that glibc unmaps as soon as they are empty.  The supervisor
  gives the memory back itself a few seconds after its last request
  (:func:`release_freed_memory`, from its loop).
* The worker runs user code, whose memory must go back to the system the
  moment it is freed, so it keeps glibc's defaults but asks for transparent
  huge pages (``glibc.malloc.hugetlb=1``): a large buffer then faults in 2 MB
  at a time.  numpy does the same for its own large arrays.  The tunable is
  read when the process starts, so it goes into the worker's environment at
  spawn (:func:`hugepage_tunables`) and comes out of ``os.environ`` when the
  worker starts (:func:`restore_tunables`), so programs the user starts
  inherit the user's own setting.
* The worker template is forked from the supervisor (supervisor/early.py), not
  started: it can only have huge pages if the supervisor has them.  So
  relaykernel's provisioner starts the supervisor with them too, and with the
  user's own value beside them (:func:`supervisor_env`, :func:`take_inherited`);
  the supervisor forks the template only if its malloc is what a spawned
  worker's would be (:func:`started_as_a_worker_would`), else it spawns it.
  The supervisor itself then keeps huge pages off (:func:`allow_huge_pages`:
  its small heap would grow 2 MB at a time), and the processes it starts turn
  them back on for themselves.

Where there is no glibc (or no THP), all of this does nothing.
"""

from __future__ import annotations

import ctypes
import json
import os

TUNABLES_ENV = "GLIBC_TUNABLES"
#: GLIBC_TUNABLES as the user had it (JSON: null when unset), for a supervisor
#: started with huge pages added (:func:`supervisor_env`)
INHERITED_ENV = "RELAYKERNEL_INHERITED_TUNABLES"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
#: madvise(MADV_HUGEPAGE) on the memory glibc maps for large allocations
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
#: mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
#: prctl: no transparent huge page for this process (and what it forks and execs)
_PR_SET_THP_DISABLE = 41
#: Freed memory at the top of the supervisor's heap beyond this is given back at
#: once: one buffer this large is rare enough to pay its page faults.
KEEP_AT_MOST = 256 << 20


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 - glibc has it, musl does not
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Supervisor: serve large allocations from the heap and keep them when freed.

    Call it before any thread exists (libzmq's included): a thread keeps the
    arena it first allocated from.  Returns whether glibc accepted it.  Freed
    memory stays in the process until :func:`release_freed_memory`, or beyond
    KEEP_AT_MOST at the top of the heap."""
    libc = _libc()
    if libc is None:
        return False
    return (bool(libc.mallopt(_M_ARENA_MAX, 1)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, KEEP_AT_MOST)))


def release_freed_memory() -> None:
    """Give freed heap pages back to the system (glibc ``malloc_trim``), in every
    arena, libzmq's IO thread's included.  A no-op where there is no glibc."""
    from .transport import trim_regions  # the supervisor's shared regions (none in a worker)

    trim_regions()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def hugepage_tunables(current: str | None) -> str:
    """The ``GLIBC_TUNABLES`` value for a worker: the user's, plus huge pages."""
    if not current:
        return HUGEPAGE_TUNABLE
    if "glibc.malloc.hugetlb=" in current:
        return current  # the user chose; theirs wins
    return f"{current}:{HUGEPAGE_TUNABLE}"


def restore_tunables(original: str | None) -> None:
    """Worker: put ``GLIBC_TUNABLES`` back to what the supervisor inherited."""
    if original is None:
        os.environ.pop(TUNABLES_ENV, None)
    else:
        os.environ[TUNABLES_ENV] = original


def supervisor_env(env: dict[str, str]) -> None:
    """The provisioner: start the supervisor with a worker's huge pages (its forked
    worker template inherits its malloc), and the user's value beside them."""
    if INHERITED_ENV in env:
        return
    original = env.get(TUNABLES_ENV)
    env[INHERITED_ENV] = json.dumps(original)
    env[TUNABLES_ENV] = hugepage_tunables(original)


def take_inherited() -> str | None:
    """Supervisor: GLIBC_TUNABLES as the user had it (None: unset).  Takes
    INHERITED_ENV out of the environment, so that no worker inherits it."""
    raw = os.environ.pop(INHERITED_ENV, None)
    if raw is not None:
        try:
            value = json.loads(raw)
            if value is None or isinstance(value, str):
                return value
        except ValueError:
            pass
    return os.environ.get(TUNABLES_ENV)


def allow_huge_pages(allow: bool) -> bool:
    """Turn transparent huge pages off (``allow=False``) or back on for this process
    (Linux's PR_SET_THP_DISABLE, which its children inherit, across exec too).
    Returns whether the kernel took it."""
    libc = _libc()
    try:
        return libc is not None and libc.prctl(_PR_SET_THP_DISABLE, int(not allow), 0, 0, 0) == 0
    except AttributeError:
        return False


def started_as_a_worker_would(inherited: str | None) -> bool:
    """Whether this process's malloc is what a worker spawned with
    :func:`hugepage_tunables` gets, so that a fork of it is as good a worker: it
    started with that value, or glibc would ignore it (no glibc; transparent huge
    pages not in madvise mode)."""
    if os.environ.get(TUNABLES_ENV) == hugepage_tunables(inherited) or _libc() is None:
        return True
    try:
        with open(_THP_MODE) as f:
            return "[madvise]" not in f.read()
    except OSError:
        return True
