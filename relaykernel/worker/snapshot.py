"""The worker's snapshots: a forked copy of the idle worker, asleep until a crash needs it.

Runs in the worker's main thread, between requests: main.py's serving loop asks
:meth:`Snapshots.delay` before it waits for the next request, and calls
:meth:`Snapshots.take` once the worker stayed idle that long, outside the event
loop.  A snapshot is taken only after an execute_request (the state may have
changed), after ``IDLE_DELAY`` of quiet, and once what the previous one cost is at
most ``COST_SHARE`` twice over (:meth:`Snapshots._back_off`): the page faults it
made the cells pay, of the cells' own time since it (what a user waits for: a
snapshot may slow the cells by 2.5 % at most), and its whole cost (those faults, its
fork and exit, in the quiet between cells), of the session's time since it.  A run
of quick cells pays for one fork, off every request's critical path; in a notebook
of data work, a snapshot every ~1.3 s of cells (a crash rolls back over the cells
since, and names them; ``%snapshot now`` asks for one after a cell).

``os.fork()`` gives a copy-on-write child holding the whole interpreter: every
variable, module, comm object and open file.  Only the thread that forks exists
in the child, so it touches nothing the worker's threads own (the zmq context,
the capture pipes): it leaves the worker's process group (the supervisor kills
that group when the worker dies), then sleeps in ``select`` on

* its wake FIFO in the private directory, created and opened before the fork
  (so it always has a reader while the child lives): the supervisor writes one
  line there (wire.WakeMeta) to promote the snapshot after the worker died;
* a pidfd of the supervisor: the snapshot exits when the supervisor does, even
  a SIGKILLed one (PR_SET_PDEATHSIG would follow the worker, its parent).

Once forked, the snapshot's child gives its copy of the free heap pages back to the
system (glibc's ``malloc_trim``, ~0.3 ms, at most ~1 ms in a pandas notebook): it
would otherwise share them, and when the next cells reuse those free chunks (glibc
serves a pandas temporary of a few MB from the heap once a larger block was freed),
every first write copies the page, which the snapshot then holds though no object of
its state lives there.  Trimmed in the child, the worker keeps the pages, alone: the
cells reuse them at the price of a cheap fault each (the page is not copied).  On the
notebook of benchmarks/notebook.py the snapshot holds ~18 MB instead of 78 to 96 MB,
the kernel's peak memory is +2.6 % over snapshots off instead of +14 %; the worker
trimming itself before the fork did as well for memory, but the cells then faulted
in fresh pages for the heap they reused, which cost them ~10 % of their CPU.

Woken, :meth:`Snapshots.take` returns the WakeMeta in the child, and main.py
rebuilds what a fork does not carry (:func:`become_worker` here, its link,
event loop and READY there).  Only the latest snapshot is kept: the worker
kills the previous one before it forks the next, and its own at shutdown.

Skipped, with one explanation on stderr per reason, when a snapshot would be
unsafe or too costly: threads the user started (the child would have their
objects but not the threads: a pool would hang), child processes (the restored
worker would not be their parent), a CUDA context (libcuda mapped: a fork cannot
use the GPU's state) and resident memory above Supervisor.snapshot_max_memory
(the copy-on-write pages of the cells after it could double the worker).  The
previous snapshot is then dropped too: rolling back past such a state would
silently undo more than the user can see.  Except past snapshot_max_memory: the
worker keeps the snapshot it has (taken while it was smaller, and counted by its
own pages against the memory limit, supervisor/resources.py), because a worker
that large is the one a memory-limit crash is likely to hit next, and a rollback
to an older state, whose report names the cells it undoes, beats an empty one.

Must not import zmq or IPython.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import mmap
import os
import resource
import select
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import wire
from ..heap import release_freed_memory
from .interrupts import MAIN_THREAD_SIGNALS, write_stack_on_signal

if TYPE_CHECKING:
    from .kernel import WorkerKernel

log = logging.getLogger("relaykernel.worker")

#: At most one snapshot per this many seconds.
MIN_INTERVAL = 0.5
#: A snapshot waits this long with no request waiting (seconds): a cell run
#: right after the previous one (Run All, nbclient) does not wait for a fork.
IDLE_DELAY = 0.05
#: The share of the session's time that snapshots may cost (what issue 18 asks,
#: ElasticNotebook's figure for itself): the next snapshot waits until the last
#: one's cost is that small a part of the cells' time, and of the session's, since it
#: was taken (see _back_off).  The default of Supervisor.snapshot_cost_share.
COST_SHARE = 0.025
#: Seconds a page fault after a snapshot costs the cells, at least: what the cells of
#: benchmarks/notebook.py paid (their extra CPU over their extra faults, 2-core VM): 1-9 µs
#: per run since the child trims the heap, 4-21 µs when the worker did (fresh pages for
#: the heap it reused).  A copy-on-write fault timed alone costs 1-2.5 µs (_calibrate: the
#: worker uses that if higher).  Kept above the median: the 2.5 % the policy allows then
#: holds with a margin (the cells' budget: ~1.5 % measured, benchmarks/README.md).
#: Counted on the worker alone (``--per-cell``: its user and system CPU from /proc), a
#: fault costs the cells 4-5 µs, of which ~2.5 µs system time: the copy itself, as in a
#: bare process (1.9-3 µs); a 1 GiB array rewritten after a snapshot pays 2.3 µs a page.
#: Not the huge pages: a write to a shared THP splits it and each 4 KiB page faults
#: alone, at the cost of a 4 KiB page's copy (glibc.malloc.hugetlb=1 lowers the total:
#: fewer fresh faults, and a fork copies one PMD per 2 MiB rather than 512 PTEs); the
#: split pages cost numpy nothing measurable after (streaming or random gather), and the
#: cyclic GC writes none of the faulted pages (the same faults with gc off).
FAULT_SECONDS = 8e-6
#: Pages of the buffer the worker times one copy-on-write fault with (_calibrate).
CALIBRATION_PAGES = 64
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: Seconds a snapshot whose worker ended waits to be woken before it exits on its own:
#: the supervisor wakes (or kills) the snapshot it knows within milliseconds of the
#: worker's death, so one still asleep after this is one it never learned of (forked
#: just before the worker died, its SNAPSHOT lost with it), which nobody would wake.
STALE_AFTER = 10.0
#: Threads of the worker itself, and of IPython, which are no user's.
_OUR_THREADS = ("relaykernel-", "IPythonHistorySavingThread")
#: pyzmq's garbage collector thread ("Thread-1"), which pyzmq starts at the first large
#: frame sent without a copy (the worker sends a comm's large buffers so): no user's, and
#: pyzmq starts it again in a forked child that needs it (it checks the pid)
_PYZMQ_GC = "zmq.utils.garbage"

#: the worker's Snapshots (for the %snapshot magic, magics.py)
current: Snapshots | None = None

#: objects of the worker a snapshot's child was forked from that must not be
#: closed nor collected there (a sqlite connection, an event loop)
_abandoned: list[Any] = []


class Snapshots:
    """The worker's latest snapshot, and when to take the next."""

    def __init__(self, kernel: WorkerKernel, private_dir: str, supervisor_pid: int, enabled: bool) -> None:
        self.kernel = kernel
        self.enabled = enabled and supervisor_pid > 0 and hasattr(os, "pidfd_open")
        self._dir = private_dir
        self._supervisor_pid = supervisor_pid
        self._dirty = False
        self._last = 0.0
        self._child = 0
        self._fifo = ""
        #: snapshots killed but not reaped yet (their exit runs beside the worker: drop)
        self._ending: list[int] = []
        self._told: set[str] = set()
        #: the latest snapshot's execution count (its state is before that cell)
        self._count = 0
        #: why no snapshot is kept ('' when one is, or none was due yet)
        self._why = ""
        #: the user turned snapshots off with %snapshot off
        self._user_off = False
        #: %snapshot now: the next idle moment takes one, whatever the last one cost
        self._now = False
        #: seconds between two snapshots, at least MIN_INTERVAL: the latest one's cost
        #: over COST_SHARE (see _back_off)
        self.interval = MIN_INTERVAL
        #: seconds the worker spent on requests since the latest snapshot (the cells' time)
        self.busy = 0.0
        #: ... that the next snapshot waits for: the faults the latest one made the cells
        #: pay, over COST_SHARE (see _back_off)
        self.busy_needed = 0.0
        #: what the latest snapshot has cost so far (seconds; see _back_off), of which
        #: its fork and exit, the page faults in the cells since, and its memory they copied
        self.cost = 0.0
        self._fixed = 0.0
        self._faults = 0
        self._copied = 0
        self._rss_at = 0  # the worker's resident bytes when it took the snapshot
        self._faults_at = 0  # ... and its minor page faults
        self._take_cpu = 0.0  # the worker's CPU in its latest take (the old one's kill, trim, fork)
        self._child_cpu = 0.0  # the whole CPU of the latest snapshot that ended (wait4)
        #: seconds per page fault in this worker (measured at its first fork, _calibrate)
        self.fault_seconds = FAULT_SECONDS
        self._calibrated = False
        #: bytes: no snapshot of a worker whose resident memory is larger (0: no limit)
        self.max_memory = 0
        #: what snapshots may cost, of the cells' time and of the session's (Supervisor.snapshot_cost_share)
        self.cost_share = COST_SHARE
        #: the supervisor's pidfd, in a snapshot's child
        self.supervisor_fd = -1
        #: this worker is a woken snapshot (see announce_targets)
        self.was_restored = False
        #: the worker's plumbing: pipes and sockets open before any user code ran
        #: (made at READY), which a snapshot's child closes (see _close_plumbing)
        self._plumbing = _plumbing()
        global current
        current = self

    def after_request(self, header: bytes, seconds: float = 0.0) -> None:
        """A request ended after ``seconds``: an execute_request may have changed the state."""
        self.busy += seconds
        if self.enabled and not self._dirty:
            with contextlib.suppress(ValueError):
                self._dirty = json.loads(header).get("msg_type") == "execute_request"

    def delay(self) -> float | None:
        """Seconds of quiet before the next snapshot, or None if none is due (the state
        has not changed, or the cells have not run long enough since the latest: only
        more cells make the next due, see _back_off)."""
        if self._now and self.enabled:
            return IDLE_DELAY
        if not (self.enabled and self._dirty) or self.busy < self.busy_needed:
            return None
        return max(IDLE_DELAY, self._last + self.interval - time.monotonic())

    def restored(self) -> None:
        """In a woken snapshot, once it is a worker again: its plumbing is new."""
        self._plumbing = _plumbing()
        self.was_restored = True

    def announce_targets(self) -> None:
        """A restored worker, at ACTIVATE: its comm targets were registered before the
        snapshot, so it names them again, as a new worker does when it registers them:
        the supervisor then replays the comms that are open now (ADOPT)."""
        if self.was_restored:
            for name in list(self.kernel.comm_manager.targets):
                self.kernel.target_changed(name, True)

    def update_existing(self, meta: dict[str, Any], frames: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        """ADOPT in a restored worker: a comm the snapshot holds already takes the
        supervisor's latest widget state as an update from the frontend (its object is
        the one the user's variables hold; a new one would be a duplicate).  Returns the
        comms the worker lacks (opened since the snapshot), for WorkerKernel.adopt."""
        comms = self.kernel.comm_manager.comms
        rest: list[dict[str, Any]] = []
        rest_frames: list[Any] = []
        offset = 0
        for spec in meta.get("comms", ()):
            count = int(spec.get("buffers", 0))
            buffers, offset = frames[offset:offset + count], offset + count
            content = spec.get("content") or {}
            comm = comms.get(str(content.get("comm_id")))
            if comm is None:
                rest.append(spec)
                rest_frames.extend(buffers)
                continue
            data = content.get("data") or {}
            if "state" in data:  # the widget protocol's full state: an update sets it
                update = {"method": "update", "state": data["state"], "buffer_paths": data.get("buffer_paths", [])}
                msg = {"header": {"msg_type": "comm_msg", "msg_id": ""}, "parent_header": {}, "metadata": {},
                       "content": {"comm_id": comm.comm_id, "data": update},
                       "buffers": [memoryview(b) for b in buffers]}
                try:
                    comm.handle_msg(msg)
                except Exception as e:  # noqa: BLE001 - the comm keeps its snapshot's state
                    log.warning("could not update comm %s in the restored worker: %s", comm.comm_id, e)
        return {**meta, "comms": rest}, rest_frames

    def activate(self, meta: wire.ActivateOptions) -> None:
        """ACTIVATE: Supervisor.snapshots (or the session's %snapshot on/off) and the
        snapshot policy's limits."""
        self._user_off = bool(meta.get("snapshots_user_off", False))
        self.max_memory = int(meta.get("snapshot_max_memory", 0) or 0)
        self.cost_share = float(meta.get("snapshot_cost_share", self.cost_share) or COST_SHARE)
        self.enabled = bool(meta.get("snapshots", self.enabled)) and self._possible()
        if not self.enabled:
            self.drop()

    def _possible(self) -> bool:
        return self._supervisor_pid > 0 and hasattr(os, "pidfd_open")

    def set_by_user(self, on: bool) -> str:
        """%snapshot on / off: for the session (the supervisor keeps the choice for the
        next workers, and drops the snapshot it holds when turned off).  Returns what
        to tell the user."""
        if on and not self._possible():
            return "Snapshots are not possible here (no supervisor pid, or no os.pidfd_open)."
        self._user_off = not on
        self.enabled = on
        if on:
            self._dirty = True  # the next idle moment takes one
            self._why = ""
            self.kernel.link.send(wire.SNAPSHOT, {"skipped": "none was taken since %snapshot on", "enabled": True})
            return "Snapshots are on: one is taken once the worker is idle after this cell."
        self.drop()
        self._why = "turned off with %snapshot off"
        self.kernel.link.send(wire.SNAPSHOT, {"skipped": "snapshots were turned off (%snapshot off)",
                                              "enabled": False})
        return "Snapshots are off for this session: a crash now loses the variables. `%snapshot on` turns them on."

    def take_now(self) -> str:
        """%snapshot now: one is taken once this cell is done, whatever the last one cost
        (before a cell the user expects trouble from).  Returns what to tell the user."""
        if not self.enabled:
            return "Snapshots are off: `%snapshot on` turns them on (and takes one after this cell)."
        self._now = self._dirty = True
        return "A snapshot is taken once this cell is done: a crash after it rolls back to the state then."

    def status(self) -> str:
        """What %snapshot shows."""
        if not self.enabled:
            if self._user_off:
                return "Snapshots are off for this session (%snapshot off); `%snapshot on` turns them on."
            if not self._possible():
                return "Snapshots are off: not possible here (no supervisor pid, or no os.pidfd_open)."
            return "Snapshots are off (Supervisor.snapshots = False); `%snapshot on` turns them on for this session."
        if self._child and _alive(self._child):
            age = time.monotonic() - self._last
            text = (f"Snapshots are on. The latest holds the state before cell [{self._count}], taken "
                    f"{age:.1f} s ago: a crash rolls back to it. `%snapshot off` turns them off.")
            if self.interval > MIN_INTERVAL or self.busy_needed:  # see _back_off
                cells = (f"once the cells have run {self.busy_needed:.1f} s since it ({self.busy:.1f} s so far) "
                         "and " if self.busy_needed else "")
                text += (f"\nThe next is taken {cells}{self.interval:.1f} s after it at the soonest, to keep "
                         f"snapshots to {self.cost_share:.1%} of the cells' time and of the session's "
                         "(Supervisor.snapshot_cost_share): it cost "
                         f"~{self.cost * 1e3:.0f} ms, its fork and exit {self._fixed * 1e3:.0f} ms and "
                         f"{self._faults} page faults in the cells since ({self.fault_seconds * 1e6:.1f} µs each; "
                         f"the cells rewrote {self._copied / (1 << 20):.0f} MB it shared with the worker), which a "
                         "new snapshot would make the next cells pay again. `%snapshot now` takes one after "
                         "this cell.")
            if self._why:  # see _keep
                text += f"\nNo newer one is taken: {self._why}."
            return text
        if self._child:
            return ("Snapshots are on, but the latest has ended (the supervisor drops one that would "
                    "push the kernel past its memory limit); a new one is taken once the worker is idle "
                    "after a cell.")
        if self._why:
            return (f"Snapshots are on, but none is kept: {self._why}. "
                    "If the worker crashes now, its variables are lost.")
        return "Snapshots are on; none is kept yet (one is taken once the worker is idle after a cell)."

    # ------------------------------------------------------------- the fork
    def take(self) -> wire.WakeMeta | None:
        """Replace the snapshot with a new one.  Returns None in the worker; in the
        snapshot's child, once the supervisor woke it, what it was woken with."""
        self._dirty = False
        now, self._now = self._now, False  # %snapshot now: asked once, whatever comes of it
        why = self._unsafe()
        self._why = why
        if why:
            self._skip(why)
            return None
        why = self._too_large()
        self._why = why
        if why and self._child and _alive(self._child):
            self._keep(why)
            return None
        if why:
            self._skip(why)
            return None
        self.kernel.flush_streams()  # pending text is the worker's to send, not the child's
        if self._back_off() and not now:
            return None
        started = time.thread_time()
        self.drop(wait=False)
        fifo = os.path.join(self._dir, f"snapshot-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.mkfifo(fifo, 0o600)
            wake_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            supervisor_fd = os.pidfd_open(self._supervisor_pid)
            worker_fd = os.pidfd_open(os.getpid())
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(fifo)
            self._why = f"it could not be prepared ({e})"
            self._skip(self._why)
            return None
        random_state = _random_state()
        probe = None if self._calibrated else _touched(CALIBRATION_PAGES)
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)  # as the parent does below: whichever runs first
            release_freed_memory()  # the free heap is not the snapshot's to hold (module docstring)
            shared = getattr(self.kernel.link, "shared", None)
            if shared is not None:  # nor the link's warm buffers for large ones (transport.SharedIn)
                shared.drop()
            if probe is not None:
                probe.close()
            _restore_random(random_state)
            return self._sleep(wake_fd, supervisor_fd, worker_fd)
        # Out of the worker's process group before the worker can die: the supervisor
        # kills that group with the worker, and the child may not run for a while yet
        # (a loaded machine; the user's os.register_at_fork hooks run before it is ours).
        with contextlib.suppress(OSError):  # it died already
            os.setpgid(pid, pid)
        self._take_cpu = time.thread_time() - started
        os.close(wake_fd)
        os.close(supervisor_fd)
        os.close(worker_fd)
        if probe is not None:
            self._calibrate(probe)
        self._child, self._fifo, self._last = pid, fifo, time.monotonic()
        self.busy = self.busy_needed = 0.0
        self._rss_at = _resident()
        self._faults_at = _minor_faults()
        shell = self.kernel.shell
        self._count = int(shell.execution_count)
        self.kernel.link.send(wire.SNAPSHOT, {"pid": pid, "execution_count": int(shell.execution_count),
                                              "wake": fifo, "names": _user_names(shell)})
        return None

    def _back_off(self) -> bool:
        """Before the snapshot is replaced: what has it cost?  The page faults it made the
        cells pay: after a fork every page the worker writes faults once, a copy of a page
        the snapshot shares or a reuse of heap the child's trim gave back (a fault costs
        the cells more than copying 4 KiB: FAULT_SECONDS).  Counted as the worker's minor
        faults since the fork but one per page it grew by (fresh memory faults with no
        snapshot too), and at least one per page the snapshot holds alone (its copies;
        pages the worker freed count too, so its drop in RSS is taken off).  And its fixed
        part, in the quiet between cells: the worker's CPU to take it (the previous one's
        kill, the fork's page tables) and the child's own (its trim, its exit: the previous
        child's whole CPU, from wait4).

        Two budgets, both COST_SHARE.  The faults, of the cells' time since the snapshot
        (``busy``, the requests' wall time): the next snapshot waits until the cells ran
        that long, so that snapshots slow the cells by 2.5 % at most, what ElasticNotebook
        reports for itself; a new snapshot would make the next cells pay as much again.
        ~4,000 faults at 8 µs in a notebook of data work want ~1.3 s of cells, a snapshot
        every ten cells or so (benchmarks/notebook.py: 2-3 over its 34 cells); quick
        cells in a row pay for one snapshot among many, and a long cell (one that is
        worth not running again) is followed by a snapshot at once.
        The whole cost, of the session's time since the snapshot: snapshots take at most
        2.5 % of the kernel's CPU over the session, think time included.  A cell that
        rewrites a 1 GiB array makes 262,144 faults, counted ~2.1 s, then the snapshot it
        copied from stays until the cells ran ~84 s and the next cells rewriting the array
        pay nothing.  (Measured, ``a += 1`` on 1 GiB every 2 s for 15 cells with the
        session's budget alone: the rewrite after a snapshot costs ~0.6 s of CPU, 2.3 µs a
        page; kept 80 s, the extra CPU was 1.7-2.1 % of the time; capped at 20 s,
        3.1-3.3 %, and the new snapshot held the same 1 GiB of its own after the next
        rewrite: dropping it sooner saves memory only when the rewrite does not come
        again, which the worker cannot see in advance.)

        True if the snapshot must stay for now: the worker tries again when the interval
        is over, or (the cells' budget) after the next request that runs long enough."""
        if not self._child:
            return False
        resident = _resident()
        freed = max(0, self._rss_at - resident)
        self._copied = max(0, _private_bytes(self._child) - freed)
        grown = max(0, resident - self._rss_at) // _PAGE
        self._faults = max(_minor_faults() - self._faults_at - grown, self._copied // _PAGE)
        self._fixed = self._take_cpu + max(self._child_cpu, _cpu_seconds(self._child))
        in_cells = self._faults * self.fault_seconds
        self.cost = self._fixed + in_cells
        self.busy_needed = in_cells / self.cost_share
        self.interval = max(MIN_INTERVAL, self.cost / self.cost_share)
        if self.busy < self.busy_needed or time.monotonic() < self._last + self.interval:
            self._dirty = True
            return True
        return False

    def _calibrate(self, probe: mmap.mmap) -> None:
        """After the first fork: time a copy-on-write fault per page on ``probe``, which
        the child shares (the second pass, which faults no more, is the loop's own time);
        a host slower than FAULT_SECONDS counts its own."""
        self._calibrated = True
        with probe:
            first = _write_pages(probe)
            second = _write_pages(probe)
        per_page = (first - second) / CALIBRATION_PAGES
        if per_page < 100e-6:  # else the worker was preempted: keep the constant
            self.fault_seconds = max(FAULT_SECONDS, per_page)

    def drop(self, wait: bool = True) -> None:
        """End the snapshot, if there is one (a newer one comes, or the worker exits).
        ``wait=False`` (take): kill it and go on; its exit (unmapping what it shares
        with the worker: ~10-40 ms of wall time for a few hundred MB) is reaped by a
        short-lived thread as soon as it is over, rather than the worker waiting for it."""
        if self._child:
            pid, self._child = self._child, 0
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            self._ending.append(pid)
            if not wait:  # SIGINT and SIGUSR1 are the main thread's (main.py): blocked in the reaper
                reaper = threading.Thread(target=self._reap_one, args=(pid, True), name="relaykernel-snapshot-reaper",
                                          daemon=True)
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
                try:
                    reaper.start()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if wait:
            for pid in list(self._ending):
                self._reap_one(pid, True)
        if self._fifo:
            with contextlib.suppress(OSError):
                os.unlink(self._fifo)
            self._fifo = ""

    def _reap_one(self, pid: int, block: bool = False) -> None:
        """Reap a snapshot that was killed (``block``: wait for its exit), keeping its
        whole CPU (its exit included) for _back_off.  The reaper thread or the main thread."""
        try:
            done, _, usage = os.wait4(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped already (the other thread, os.wait in a cell)
            done, usage = pid, None
        except OSError:
            return
        if done:
            with contextlib.suppress(ValueError):
                self._ending.remove(pid)
            if usage is not None:
                self._child_cpu = usage.ru_utime + usage.ru_stime

    def _sleep(self, wake_fd: int, supervisor_fd: int, worker_fd: int = -1) -> wire.WakeMeta:
        """The child (out of the worker's group: take): asleep until woken, until the supervisor
        ends, or until STALE_AFTER after its worker ended with nobody waking it (``worker_fd``:
        a pidfd of the worker it was forked from)."""
        self._close_plumbing(wake_fd, supervisor_fd, worker_fd)
        self._child, self._fifo, self._dirty, self._last = 0, "", False, time.monotonic()
        self.busy = self.busy_needed = 0.0  # the worker's budget, not ours: we hold no snapshot yet
        self._ending = []  # the worker's to reap, not ours
        self.supervisor_fd = supervisor_fd
        watched = [wake_fd, supervisor_fd] + ([worker_fd] if worker_fd >= 0 else [])
        stale_at = None
        line = b""
        while b"\n" not in line:
            timeout = None if stale_at is None else max(0.0, stale_at - time.monotonic())
            readable, _, _ = select.select(watched, [], [], timeout)
            if supervisor_fd in readable:
                os._exit(0)
            if worker_fd in readable:  # the worker ended: the supervisor wakes us now, or never
                watched.remove(worker_fd)
                os.close(worker_fd)
                stale_at = time.monotonic() + STALE_AFTER
                continue
            if not readable:
                os._exit(0)  # stale: forked just before the worker died, unknown to the supervisor
            try:
                chunk = os.read(wake_fd, 4096)
            except BlockingIOError:
                continue
            line += chunk
        os.close(wake_fd)
        if worker_fd in watched:
            os.close(worker_fd)
        wake: wire.WakeMeta = json.loads(line.split(b"\n", 1)[0])
        return wake

    def _close_plumbing(self, *needed: int) -> None:
        """Close the child's copies of the worker's pipes and sockets: held open here,
        they would hide the worker's death (the supervisor's sentinel of a spawned
        worker is a pipe that closes when the worker exits) and keep its zmq
        connection open.  What the user opened, our own output fds, and the fds the
        child sleeps on (``needed``: an fd of the plumbing closed since may have given
        them its number) stay."""
        keep = {0, 1, 2, *needed}
        capture = self.kernel.fd_capture
        if capture is not None:
            keep.update(capture.saved.values())
        for handler in logging.getLogger("relaykernel").handlers:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                keep.add(handler.stream.fileno())  # type: ignore[attr-defined]
        for fd in self._plumbing - keep:
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------- policy
    def _unsafe(self) -> str:
        """Why a snapshot would be unsafe now ('' if it is not)."""
        threads = [t.name for t in threading.enumerate()
                   if t is not threading.main_thread() and t.is_alive() and not t.name.startswith(_OUR_THREADS)
                   and type(t).__module__ != _PYZMQ_GC]
        if threads:
            return f"threads the user started are running ({', '.join(sorted(threads)[:5])})"
        if self.kernel.subshells.busy():
            return "a subshell is running a request"
        children = [pid for pid in _children() if pid != self._child and pid not in self._ending]
        if children:
            return f"child processes are alive (pids {', '.join(map(str, children[:5]))})"
        if _cuda_loaded():
            return ("CUDA is initialised in the worker (libcuda is loaded): a forked copy cannot use the "
                    "GPU context, so a restored worker would hold broken device objects")
        return ""

    def _too_large(self) -> str:
        """Why the worker is too large for a new snapshot ('' if it is not)."""
        if self.max_memory and (rss := _resident()) > self.max_memory:
            return (f"resident memory is {rss / 1024**3:.2f} GiB, above Supervisor.snapshot_max_memory "
                    f"({self.max_memory / 1024**3:g} GiB): the cells after a snapshot could make its "
                    "copy-on-write pages double that")
        return ""

    def _keep(self, why: str) -> None:
        """No new snapshot, but the one the worker has stays (the supervisor holds it
        still: nothing to tell it)."""
        if "keep" not in self._told:
            self._told.add("keep")
            self.kernel.stderr.write(f"relaykernel: no new snapshot of the worker is taken: {why}. The one "
                                     f"before cell [{self._count}] is kept: a crash rolls back to it. (Said once.)\n")
            self.kernel.flush_streams()

    def _skip(self, why: str) -> None:
        self.drop()
        self.kernel.link.send(wire.SNAPSHOT, {"skipped": why})
        kind = why.split(" ", 1)[0]
        if kind not in self._told:
            self._told.add(kind)
            self.kernel.stderr.write(f"relaykernel: no snapshot of the worker was kept: {why}. If the "
                                     "worker crashes now, its variables are lost. (Said once.)\n")
            self.kernel.flush_streams()


def _user_names(shell: Any) -> int:
    hidden = getattr(shell, "user_ns_hidden", {})
    return sum(1 for name in shell.user_ns if not name.startswith("_") and name not in hidden)


def _random_state() -> Any:
    """The random module's state, if it is imported (None if not)."""
    module = sys.modules.get("random")
    return module.getstate() if module is not None else None


def _restore_random(state: Any) -> None:
    """In the snapshot's child: random.py reseeds its generator in every forked child
    (os.register_at_fork), so a seeded sequence would not go on where the cells left
    it; the state the worker had at the fork comes back, as every other object's does.
    (numpy's generators are not reseeded at fork: they need nothing.)"""
    module = sys.modules.get("random")
    if state is not None and module is not None:
        with contextlib.suppress(Exception):
            module.setstate(state)


def _plumbing() -> set[int]:
    """This process's open pipes, sockets and anonymous inodes (eventfd, epoll)."""
    fds = set()
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                if os.readlink(f"/proc/self/fd/{name}").startswith(("pipe:", "socket:", "anon_inode:")):
                    fds.add(int(name))
    return fds


def _resident() -> int:
    """This process's resident memory in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _minor_faults() -> int:
    """This process's minor page faults so far (one getrusage)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid`` so far, to the nanosecond (/proc/PID/schedstat; 0 if unknown)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _touched(pages: int) -> mmap.mmap | None:
    """A private anonymous buffer of ``pages`` pages, each written once (resident; a
    fork shares them copy-on-write)."""
    try:
        probe = mmap.mmap(-1, pages * _PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return None
    _write_pages(probe)
    return probe


def _write_pages(buf: mmap.mmap) -> float:
    """Write one byte of each page of ``buf``; the seconds it took."""
    started = time.perf_counter()
    for offset in range(0, len(buf), _PAGE):
        buf[offset] = 1
    return time.perf_counter() - started


def _cuda_loaded() -> bool:
    """The CUDA driver library is mapped (any CUDA context starts with it): one read of
    /proc/self/maps, no torch or cupy imported."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return b"/libcuda.so" in f.read()
    except OSError:
        return False


def _private_bytes(pid: int) -> int:
    """Pages only this process holds (USS), from /proc/PID/smaps_rollup; 0 if unknown."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def _alive(pid: int) -> bool:
    """The snapshot child still runs (not reaped, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children() -> list[int]:
    """Pids of this process's children (Linux /proc; none elsewhere)."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
    return pids


# ------------------------------------------------------------ the child, woken
def become_worker(kernel: WorkerKernel, wake: wire.WakeMeta, supervisor_fd: int) -> None:
    """In a woken snapshot: what the fork did not carry, but the link and the event
    loop (main.py's): output capture, crash log, history database, supervisor watch.
    Call with the main thread's signals blocked: the threads started here inherit that."""
    _watch_supervisor(supervisor_fd)
    for stream in (kernel.stdout, kernel.stderr):
        stream.resume_as_worker()
    if kernel.fd_capture is not None:
        kernel.fd_capture.restart()
    crash_log = open(os.open(wake["crash_log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),  # noqa: SIM115
                     "w")  # lives as long as the process
    faulthandler.enable(file=crash_log, all_threads=False)
    write_stack_on_signal(crash_log)
    _reconnect_history(kernel.shell)


def _watch_supervisor(supervisor_fd: int) -> None:
    def watch() -> None:
        select.select([supervisor_fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="relaykernel-supervisor-watch", daemon=True).start()


def _reconnect_history(shell: Any) -> None:
    """A new sqlite connection (one must not cross a fork), saving thread and session:
    the dead worker may have stored the cells after the snapshot under the numbers the
    next cells take."""
    hm = getattr(shell, "history_manager", None)
    if hm is None or not hm.enabled:
        return
    try:
        hm.db_input_cache_lock = threading.Lock()
        hm.db_output_cache_lock = threading.Lock()
        _abandoned.append(hm.db)
        hm.save_thread = None
        hm.init_db()
        hm.new_session()
        hm._restart_thread_if_stopped()
    except Exception as e:  # noqa: BLE001 - history is worth less than the restored state
        log.warning("restored worker: history will not be saved (%s)", e)
