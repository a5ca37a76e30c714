"""Memory guard and resource usage of the kernel's processes.

Used by the supervisor's main thread.  The guard samples the active worker's
memory (with its children) a few times a second: past the soft limit the
running cell is interrupted with a MemoryError that says why (the worker keeps
its variables); past the hard limit the worker is replaced with a clear
report, before the system's OOM killer takes the whole kernel silently.  The
worker's snapshot counts by its private pages, and has a share of each limit
(SNAPSHOT_SHARE): while its own pages stay within that share, a cell that brings
the kernel to a limit is the one stopped (past the hard limit the snapshot takes
over), so a worker about to pass the limit does not lose the snapshot first; a
snapshot that grew past its share is dropped first (housekeeping.py).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

GIB = 1024**3
#: The share of a memory limit kept for the worker's snapshot (its private pages:
#: a few MB after a cell, more when the cells after it rewrite what they share).
#: While the snapshot stays within it, the worker's own budget is the limit less
#: the snapshot, and a running cell that uses it up meets the limit as if it had
#: passed it alone: with the hard limit the worker is replaced and the snapshot
#: takes over, rather than the snapshot being dropped right before the worker passes
#: the limit by itself and the crash finds nothing to roll back to.
SNAPSHOT_SHARE = 0.1


def tree_rss(pid: int, snapshot_pid: int = 0, private_children: bool = False) -> int:
    """Resident memory of a process and its descendants, in bytes (0 if gone).

    The worker's snapshot (``snapshot_pid``, a copy-on-write fork of it) counts only
    its private pages (USS): the pages it shares with the worker are already in the
    worker's RSS.  Counted twice, a snapshot of a 1 GB worker would double it.
    ``private_children``: every descendant counts by its private pages (see
    MemoryGuard.check)."""
    import psutil  # only when a limit or usage is asked for: keeps the idle supervisor small

    try:
        proc = psutil.Process(pid)
        total: int = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                private = private_children or child.pid == snapshot_pid
                total += snapshot_uss(child.pid) if private else child.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


def snapshot_uss(pid: int) -> int:
    """A snapshot's private pages in bytes: what killing it gives back (0 if gone).
    One read of /proc/PID/smaps_rollup (a page-table walk: ~1 ms per GB mapped)."""
    import psutil

    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except psutil.Error:
        return 0


@dataclass
class MemoryGuard:
    soft_limit: int = 0  # bytes; 0 = off
    hard_limit: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.soft_limit or self.hard_limit)

    def check(self, pid: int, snapshot_pid: int = 0) -> tuple[str, int]:
        """('hard' | 'soft' | '', bytes) for the worker with this pid (its snapshot's
        private pages included: see tree_rss)."""
        rss = tree_rss(pid, snapshot_pid)
        if self.level(rss):
            # Counted again with every child by its private pages before the worker is
            # stopped for it: a fork of the worker shares most of its memory with it,
            # and one is the next snapshot between its fork and the SNAPSHOT that
            # names it (a 0.6 GiB worker would pass a 1 GiB limit in that moment).
            # Only then: a page-table walk per child (~1 ms per GB).
            rss = tree_rss(pid, snapshot_pid, private_children=True)
        return self.level(rss), rss

    def snapshot_share(self, level: str) -> int:
        """Bytes of the ``level`` limit that the worker's snapshot may hold (SNAPSHOT_SHARE)."""
        return int(SNAPSHOT_SHARE * (self.hard_limit if level == "hard" else self.soft_limit))

    def level(self, rss: int) -> str:
        """'hard', 'soft' or '': the limit this many bytes reach."""
        if self.hard_limit and rss >= self.hard_limit:
            return "hard"
        if self.soft_limit and rss >= self.soft_limit:
            return "soft"
        return ""


class Usage:
    """The usage_reply of jupyter-resource-usage, for supervisor plus worker."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def _sample(self, pid: int | None, snapshot_pid: int = 0) -> dict[str, Any]:
        import psutil

        if pid is None:
            return {"pid": None, "cpu": 0.0, "memory": 0}
        try:
            proc = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
            return {"pid": pid, "cpu": proc.cpu_percent(None), "memory": tree_rss(pid, snapshot_pid)}
        except psutil.Error:
            self._procs.pop(pid, None)
            return {"pid": pid, "cpu": 0.0, "memory": 0}

    def reply(self, worker_pid: int | None, snapshot_pid: int = 0) -> dict[str, Any]:
        """The worker's memory has its snapshot's private pages in it (tree_rss), and
        "snapshot" says how much of it that is."""
        import psutil

        supervisor = self._sample(os.getpid())
        supervisor["memory"] = psutil.Process().memory_info().rss
        worker = self._sample(worker_pid, snapshot_pid)
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "kernel_cpu": supervisor["cpu"] + worker["cpu"],
            "kernel_memory": supervisor["memory"] + worker["memory"],
            "host_cpu_percent": psutil.cpu_percent(None),
            "cpu_count": psutil.cpu_count(),
            "host_virtual_memory": dict(psutil.virtual_memory()._asdict()),
            "supervisor": supervisor,
            "worker": worker,
            "snapshot": {"pid": snapshot_pid or None, "memory": snapshot_uss(snapshot_pid) if snapshot_pid else 0},
        }
