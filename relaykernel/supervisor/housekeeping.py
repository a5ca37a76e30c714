"""The supervisor's chores between messages: timers, the memory guard, heap trimming
and sweeping directories that killed supervisors left behind.

Everything here runs in the supervisor's main thread, between two polls of the
loop: a timer is a callback at a monotonic time, and the loop's poll sleeps no
longer than until the next one is due.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..heap import release_freed_memory
from .private_dir import remove_abandoned
from .resources import GIB, MemoryGuard, snapshot_uss

if TYPE_CHECKING:
    from .outbox import Outbox
    from .pool import WorkerPool
    from .shell_queue import ShellQueue
    from .sockets import Incoming
    from .worker_process import Snapshot, WorkerProcess

log = logging.getLogger("relaykernel.supervisor")

#: Seconds between two samples of the worker's memory (when a limit is set).
MEMORY_CHECK_INTERVAL = 0.2
#: Buffers above this size (bytes) make the supervisor trim its heap afterwards
#: (as every finished request does).
LARGE_BUFFER = 1 << 18
#: Seconds without requests or large buffers before the heap is trimmed.
TRIM_QUIET = 3.0
#: Seconds after start before killed supervisors' private directories are removed
#: (private_dir.py): off the path of the first requests.
ABANDONED_DIRS_DELAY = 3.0


class Timers:
    """One-shot callbacks at monotonic times, run by the loop between polls."""

    def __init__(self) -> None:
        self._due: list[tuple[float, Callable[[], None]]] = []

    def after(self, delay: float, callback: Callable[[], None]) -> None:
        self._due.append((time.monotonic() + delay, callback))

    def timeout_ms(self) -> int | None:
        """How long the loop may sleep: until the next timer (None: no timer)."""
        if not self._due:
            return None
        return max(0, int((min(t for t, _ in self._due) - time.monotonic()) * 1000) + 1)

    def run_due(self) -> None:
        now = time.monotonic()
        due = [t for t in self._due if t[0] <= now]
        if due:
            self._due = [t for t in self._due if t[0] > now]
            for _, callback in due:
                callback()


class Housekeeping:
    """Memory limits of the active worker, the supervisor's own heap, stale directories."""

    def __init__(self, timers: Timers, pool: WorkerPool, queue: ShellQueue, guard: MemoryGuard,
                 private_dir: str, replace_active: Callable[[str], None], out: Outbox | None = None) -> None:
        self.timers = timers
        self.pool = pool
        self.queue = queue
        self.guard = guard
        self.private_dir = private_dir
        self.replace_active = replace_active
        self.out = out
        self._told_snapshot_dropped = False
        self._soft_limit_hit: Incoming | None = None
        self._trim_scheduled = False
        self._last_busy = 0.0

    def start(self) -> None:
        if self.guard.enabled:
            self.timers.after(0, self._check_memory)
        self.timers.after(ABANDONED_DIRS_DELAY, self._remove_abandoned_dirs)

    # ------------------------------------------------------------ the heap
    def after_large(self, buffers: Sequence[Any]) -> None:
        if any(len(b) > LARGE_BUFFER for b in buffers):
            self.trim_later()

    def trim_later(self) -> None:
        """Give freed memory back once the kernel has been quiet for TRIM_QUIET seconds.

        The heap keeps what messages freed (``heap.keep_freed_memory``), so the
        next large buffer or output burst lands in pages already mapped; giving
        them back between two transfers would make each one fault them in again."""
        self._last_busy = time.monotonic()
        if not self._trim_scheduled:
            self._trim_scheduled = True
            self.timers.after(TRIM_QUIET, self._trim_when_quiet)

    def _trim_when_quiet(self) -> None:
        quiet_since = time.monotonic() - self._last_busy
        if quiet_since < TRIM_QUIET:
            self.timers.after(TRIM_QUIET - quiet_since, self._trim_when_quiet)
            return
        self._trim_scheduled = False
        release_freed_memory()

    # ---------------------------------------------------------- the memory guard
    def _check_memory(self) -> None:
        """Every MEMORY_CHECK_INTERVAL: interrupt at the soft limit, replace at the hard one."""
        self.timers.after(MEMORY_CHECK_INTERVAL, self._check_memory)
        worker = self.pool.active_ready()
        if worker is None:
            return
        snapshot: Snapshot | None = getattr(worker, "snapshot", None)  # fakes in unit tests have none
        level, rss = self.guard.check(worker.pid, snapshot.pid if snapshot is not None else 0)
        kept = 0  # bytes of rss that are the snapshot's own pages
        if level and snapshot is not None:
            level, rss, kept = self._snapshot_or_worker(worker, snapshot, level, rss)
        if level == "hard":
            limit = self.guard.hard_limit / GIB
            used = f"{(rss - kept) / GIB:.2f} GiB"
            if kept:
                used += f", and its snapshot {kept / GIB:.2f} GiB of its own"
            self.replace_active(f"memory limit of {limit:g} GiB exceeded (the worker used {used}), "
                                "so the worker was replaced")
        elif level == "soft" and (request := self._running()) is not None and self._soft_limit_hit is not request:
            self._soft_limit_hit = request
            log.warning("worker %s passed the soft memory limit (%.2f GiB)", worker.number, rss / GIB)
            try:
                os.kill(worker.pid, signal.SIGUSR1)  # the worker raises MemoryError in the cell
            except ProcessLookupError:
                pass

    def _running(self) -> Incoming | None:
        """The request the active worker is running, once it began."""
        request = self.queue.current
        return request if request is not None and request.started else None

    def _snapshot_or_worker(self, worker: WorkerProcess, snapshot: Snapshot, level: str,
                            rss: int) -> tuple[str, int, int]:
        """The worker with its snapshot reached a limit: which of them gives way.

        The worker does when it passes the limit by itself, and also when a running
        cell brought it there while the snapshot holds no more than its share of the
        limit (resources.SNAPSHOT_SHARE): that cell is about to pass it alone, and
        dropping the snapshot now would leave nothing to roll back to when it does.
        Otherwise (the worker is idle, or the snapshot grew past its share because
        the cells rewrote the memory they share) the snapshot is dropped, said once
        on stderr: the kernel must not pass a limit for a snapshot's sake.  Returns
        the level and memory that stand, and how much of it is the snapshot's."""
        uss = snapshot_uss(snapshot.pid)
        own = rss - uss
        if self.guard.level(own) == level:
            return level, rss, uss  # the worker passes it by itself: replaced (rolled back), or interrupted
        if self._running() is not None and uss <= self.guard.snapshot_share(level):
            log.warning("worker %s with its snapshot (%.2f GiB of its own) reached the %s memory limit",
                        worker.number, uss / GIB, level)
            return level, rss, uss
        limit = self.guard.hard_limit if level == "hard" else self.guard.soft_limit
        log.warning("dropping worker %s's snapshot: with it the kernel uses %.2f GiB, over the %s limit",
                    worker.number, rss / GIB, level)
        self.pool.drop_snapshot(worker)
        worker.no_snapshot = (f"it was dropped: with it the kernel would have passed its memory limit of "
                              f"{limit / GIB:g} GiB")
        if self.out is not None and not self._told_snapshot_dropped:
            self._told_snapshot_dropped = True
            self.out.stream(None, "stderr",
                            f"relaykernel: the worker's snapshot was dropped: with it the kernel used "
                            f"{rss / GIB:.2f} GiB, past its memory limit of {limit / GIB:g} GiB (a snapshot's own "
                            "pages grow as the worker rewrites the memory they share). A new one is taken when the "
                            "worker is idle; until then a crash loses the variables. (Said once.)\n")
        return self.guard.level(own), own, 0

    # ------------------------------------------------------ stale directories
    def _remove_abandoned_dirs(self) -> None:
        for path in remove_abandoned(self.private_dir):
            log.info("removed %s, left by a supervisor that was killed", path)
