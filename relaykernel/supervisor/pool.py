"""The worker pool: the active worker, its warm spares, and how new ones start.

Owned by the supervisor's main thread.  The pool registers each worker's link
and process sentinel with the loop's poller, promotes a ready spare when there
is no active worker, keeps ``standby`` spares, and slows down when workers keep
dying before they are used (a broken environment must not fork-bomb the
machine).  It never decides what a death means for the requests: that is
recovery.py's job.

Nothing here may block the loop: a spare that died unnoticed is never
activated (its sentinel is checked first), and a send to a worker that cannot
take it kills that worker instead of waiting (worker_process.py).
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable
from typing import Any

import zmq

from .. import wire
from ..spawn import WorkerConfig
from .housekeeping import Timers
from .launcher import WARM_UP_LIMIT, ServerState, WorkerLauncher
from .worker_process import ExitInfo, Snapshot, SnapshotProcess, WorkerProcess, WorkerState

log = logging.getLogger("relaykernel.supervisor")

#: Consecutive workers that may die before READY (or spares within
#: SPARE_DEATH_WINDOW seconds) before new ones start only every BACKOFF seconds.
MAX_START_FAILURES = 3
SPARE_DEATH_WINDOW = 30.0
BACKOFF = 5.0
#: Seconds a woken snapshot has to say READY before it is killed (a spare takes over).
WAKE_LIMIT = 5.0

#: Starts worker number N with a multiprocess context (spawn or fork server).
StartWorker = Callable[[int, Any], WorkerProcess]


class WorkerPool:
    """Which worker runs requests, which wait, and when to start more."""

    def __init__(self, *, ctx: zmq.Context, private_dir: str, config: WorkerConfig, poller: zmq.Poller,
                 timers: Timers, standby: int = 1, first_worker: WorkerProcess | None = None,
                 start: StartWorker | None = None, launcher: WorkerLauncher | None = None) -> None:
        self.poller = poller
        self.timers = timers
        self.standby = standby
        self.launcher = launcher or WorkerLauncher(config.inherited_tunables, private_dir)
        poller.register(self.launcher.wake_fd, zmq.POLLIN)
        self._start: StartWorker = start or (
            lambda number, context: WorkerProcess(ctx, number, private_dir, config, start_method=context))
        self._ctx, self._private_dir, self._config = ctx, private_dir, config
        #: why snapshots are off for the session ('' when on): Supervisor.snapshots,
        #: then the user's %snapshot off/on (worker/snapshot.py), kept for the next workers
        self.snapshots_off = "" if config.snapshots else "snapshots are off (Supervisor.snapshots = False)"
        #: a snapshot being woken to take over from the dead active worker
        self.restoring: WorkerProcess | None = None
        #: the ACTIVATE meta for a worker about to become active (set by the loop)
        self.activation: Callable[[WorkerProcess], wire.ActivateMeta] = _no_activation
        self.active: WorkerProcess | None = None
        self.spares: list[WorkerProcess] = []
        self.by_link: dict[zmq.Socket, WorkerProcess] = {}
        self.by_sentinel: dict[int, WorkerProcess] = {}
        self.stopping = False
        self._numbers = iter(range(first_worker.number + 1 if first_worker else 1, 1 << 30))
        self._start_failures = 0
        self._spare_deaths: list[float] = []  # when spares died, over SPARE_DEATH_WINDOW
        if first_worker is not None:
            self._adopt(first_worker)

    def active_ready(self) -> WorkerProcess | None:
        """The active worker if it takes requests now."""
        worker = self.active
        return worker if worker is not None and worker.state is WorkerState.ACTIVE else None

    # ------------------------------------------------------------ keeping count
    def ensure(self) -> None:
        """Promote a ready spare if there is no active worker; keep the standby count."""
        if self.stopping:
            return
        if self.launcher.wants_template():  # not started yet, or died: (again) before anything
            self._warm_up()
        if self.active is None and self.restoring is not None:
            self._promote_restored()
        elif self.active is None:
            ready = next((w for w in self.spares if w.state is WorkerState.READY and not _exited(w)), None)
            if ready is not None:
                self.spares.remove(ready)
                self._activate(ready)
            elif self.launcher.uses_template and self.launcher.waiting_for_server():
                pass  # the template forks one once READY (fork_server_answered), or fails in time
            elif not any(w.state is WorkerState.STARTING for w in self.spares):
                # none starting, and any ready one is dead: its sentinel is next in the poll
                self._start_worker()
        if self.active is not None and len(self.spares) < self.spares_wanted():
            if self.launcher.state is ServerState.COLD:
                self._warm_up()
            if self.launcher.waiting_for_server():
                return  # its fork will be ready first; a spawn now would only compete with it
            while len(self.spares) < self.spares_wanted():
                self._start_worker()

    def _warm_up(self) -> None:
        self.launcher.warm_up()
        if self.launcher.state is ServerState.WARMING:  # in case it never answers
            self.timers.after(WARM_UP_LIMIT + 0.1, self.ensure)

    def spares_wanted(self) -> int:
        """``standby``; with ``standby`` < 0 (``--Supervisor.standby_workers=-1``), one,
        but none while the active worker holds a snapshot and the fork server is warm.
        A crash then wakes the snapshot (~10 ms to the next result, as a standby would
        take over), and a restart, or a crash with no snapshot yet (a second one within
        ~50 ms), waits for a fork that builds its shell (~25-60 ms): for the standby's
        ~11 MB of its own (~15 MB PSS).  Without the server a new worker is a ~0.5 s
        spawn: the standby stays."""
        if self.launcher.uses_template and self.launcher.state in (ServerState.WARM, ServerState.WARMING):
            # the template is a standby: a fork away from READY (~10 ms, launcher.py)
            return max(0, self.standby - 1)
        if self.standby >= 0:
            return self.standby
        snapshot = getattr(self.active, "snapshot", None)  # fakes in unit tests have none
        if snapshot is not None and not self.snapshots_off and self.launcher.state is ServerState.WARM:
            return 0
        return 1

    def _retire_surplus(self) -> None:
        """Stop the spares past spares_wanted() (the active worker took a snapshot).
        Not waited for here: forgotten at once, reaped a moment later."""
        surplus = sorted(self.spares, key=lambda w: w.state is WorkerState.READY)  # starting ones first
        for worker in surplus[: max(0, len(self.spares) - self.spares_wanted())]:
            self.forget(worker)
            if worker.state is WorkerState.STARTING:
                worker.kill()  # still building its shell: it would not hear the request
            else:
                worker.request_stop()
            log.debug("retired spare worker %s: the active worker's snapshot stands in for it", worker.number)
            self.timers.after(1.0, _stopper(worker))

    def fork_server_answered(self) -> None:
        """The fork server or the template answered, failed, or (the template) died."""
        self.launcher.acknowledge()
        self.launcher.check()
        self.ensure()

    def _start_worker(self) -> None:
        context = self.launcher.context()
        try:
            worker = self._start(next(self._numbers), context)
        except Exception as e:
            if context is WorkerLauncher.spawn_context:
                raise
            log.warning("could not fork a worker from the %s (%s); spawning it", context.get_start_method(), e)
            self.launcher.check()
            worker = self._start(next(self._numbers), WorkerLauncher.spawn_context)
        self._adopt(worker)

    def _adopt(self, worker: WorkerProcess) -> None:
        self.spares.append(worker)
        self.by_link[worker.link] = worker
        self.by_sentinel[worker.sentinel] = worker
        self.poller.register(worker.link, zmq.POLLIN)
        self.poller.register(worker.sentinel, zmq.POLLIN)
        log.debug("started worker %s (pid %s, %s)", worker.number, worker.pid, worker.start_method)

    def _activate(self, worker: WorkerProcess) -> None:
        """ACTIVATE a ready spare.  If it cannot take the message it is killed (its
        sentinel brings it back to the loop as a dead spare) and none is active yet."""
        meta: wire.ActivateOptions = {**self.activation(worker), "snapshots": not self.snapshots_off,
                                        "snapshots_user_off": "%snapshot off" in self.snapshots_off,
                                        "snapshot_max_memory": self._config.snapshot_max_memory,
                                        "snapshot_cost_share": self._config.snapshot_cost_share}
        if worker.send(wire.encode(wire.ACTIVATE, dict(meta))):
            worker.state = WorkerState.ACTIVATING
            self.active = worker

    def ready(self, worker: WorkerProcess) -> None:
        """The worker said READY: a spare that works, so starts are no longer failing."""
        worker.state = WorkerState.READY
        self._start_failures = 0
        log.debug("worker %s ready in %.3fs", worker.number, time.monotonic() - worker.started_at)
        self.ensure()

    def activated(self, worker: WorkerProcess) -> bool:
        """The worker finished ACTIVATE; True if it is the active one and takes requests now."""
        if worker is not self.active:
            return False
        worker.state = WorkerState.ACTIVE
        log.info("worker %s (pid %s) is active", worker.number, worker.pid)
        return True

    # --------------------------------------------------------------- snapshots
    def snapshot_taken(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        """SNAPSHOT: the worker's new snapshot replaces its old one (which the worker
        ended), or it keeps none and says why."""
        if worker.snapshot is not None:
            worker.snapshot.close()
            worker.snapshot = None
        if "enabled" in lm.meta:
            self.snapshots_off = "" if lm.meta["enabled"] else "snapshots are off (%snapshot off)"
        skipped = lm.meta.get("skipped")
        if skipped:
            worker.no_snapshot = f"the worker kept none: {skipped}"
            self.ensure()  # a standby again, if the snapshot stood in for it
            return
        try:
            snapshot = Snapshot.of(lm.meta)
        except (OSError, KeyError, ValueError, TypeError) as e:
            worker.no_snapshot = f"the latest one could not be held ({e})"
            self.ensure()
            return
        if worker is not self.active:  # a worker on its way out: nobody will wake it
            snapshot.kill()
            snapshot.close()
            return
        worker.snapshot = snapshot
        self._retire_surplus()

    def roll_back(self, dead: WorkerProcess) -> Snapshot | str:
        """Wake the dead active worker's snapshot to take over (ensure() activates it
        once READY).  Returns the snapshot, or why there is none to wake."""
        snapshot: Snapshot | None = getattr(dead, "snapshot", None)  # fakes in unit tests have none
        dead.snapshot = None
        if self.snapshots_off:
            if snapshot is not None:
                snapshot.kill()
                snapshot.close()
            return self.snapshots_off
        if snapshot is None:
            return str(getattr(dead, "no_snapshot", "none was taken"))
        if not snapshot.alive():
            snapshot.close()
            return "the snapshot process had ended"
        try:
            worker = SnapshotProcess(self._ctx, next(self._numbers), self._private_dir, self._config, snapshot)
        except OSError as e:
            snapshot.kill()
            snapshot.close()
            return f"the snapshot could not be woken ({e})"
        self.by_link[worker.link] = worker
        self.by_sentinel[worker.sentinel] = worker
        self.poller.register(worker.link, zmq.POLLIN)
        self.poller.register(worker.sentinel, zmq.POLLIN)
        self.restoring = worker
        self.timers.after(WAKE_LIMIT, lambda: worker.kill() if worker.state is WorkerState.STARTING else None)
        log.info("waking snapshot %s (pid %s) as worker %s", snapshot.execution_count, worker.pid, worker.number)
        return snapshot

    def drop_snapshot(self, worker: WorkerProcess, wait: float = 0.0) -> None:
        """End a worker's snapshot (a restart resets the state; the kernel stops)."""
        snapshot: Snapshot | None = getattr(worker, "snapshot", None)  # fakes in unit tests have none
        if snapshot is not None:
            snapshot.kill(wait)
            snapshot.close()
            worker.snapshot = None

    def _promote_restored(self) -> None:
        worker = self.restoring
        if worker is not None and worker.state is WorkerState.READY and not _exited(worker):
            self.restoring = None
            self._activate(worker)

    # ------------------------------------------------------------------ deaths
    def forget(self, worker: WorkerProcess) -> None:
        self.by_link.pop(worker.link, None)
        self.by_sentinel.pop(worker.sentinel, None)
        for key in (worker.link, worker.sentinel):
            try:
                self.poller.unregister(key)
            except KeyError:
                pass
        if worker in self.spares:
            self.spares.remove(worker)
        if self.active is worker:
            self.active = None
        if self.restoring is worker:
            self.restoring = None

    def exit_of(self, worker: WorkerProcess, timeout: float = 1.0) -> ExitInfo:
        """How the worker ended.  multiprocess reports exit code 255 for a forked worker
        whose fork server died (its status died with the server); the worker was then
        killed with it (PDEATHSIG), which is what the user should read."""
        exit_info = worker.exit_info(timeout)
        if (exit_info.exitcode == 255 and worker.start_method == "forkserver"
                and not self.launcher.server_alive()):
            return ExitInfo(None, cause="killed when the fork server it was started from died")
        template = getattr(getattr(worker, "process", None), "template", None)
        if exit_info.exitcode is None and template is not None and not template.alive():
            return ExitInfo(None, cause="ended after the worker template it was forked from had died "
                                        "(its exit status was the template's to read)")
        return exit_info

    def spare_died(self, worker_was_starting: bool) -> bool:
        """Count a spare's death; True when starts must slow down (one every BACKOFF s)."""
        now = time.monotonic()
        if worker_was_starting:
            self._start_failures += 1
        # spares that die once ready (something keeps killing them) must not
        # make us start one after another either
        self._spare_deaths = [t for t in self._spare_deaths if now - t < SPARE_DEATH_WINDOW] + [now]
        if self._start_failures >= MAX_START_FAILURES or len(self._spare_deaths) >= MAX_START_FAILURES:
            self.timers.after(BACKOFF, self.ensure)
            return True
        return False

    @property
    def cannot_start(self) -> bool:
        """No worker is active and new ones keep dying before READY: queued requests would wait forever."""
        return self.active is None and self._start_failures >= MAX_START_FAILURES

    def take_active(self) -> WorkerProcess | None:
        """Remove the active worker from the pool (the caller kills and closes it)."""
        worker = self.active
        if worker is not None:
            self.forget(worker)
        return worker

    # ---------------------------------------------------------------- the end
    def close(self) -> None:
        """Stop every worker (bounded: ~1 s), the fork server and the resource tracker."""
        self.stopping = True
        workers = [w for w in (self.active, self.restoring) if w is not None] + list(self.spares)
        for worker in workers:
            self.drop_snapshot(worker, wait=0.2)
            self.forget(worker)
            if worker.state is WorkerState.STARTING:
                worker.kill()  # still importing IPython: it would not hear the request
            else:
                worker.request_stop()
        deadline = time.monotonic() + 1.0
        for worker in workers:
            worker.stop(grace=max(0.05, deadline - time.monotonic()))
        self.launcher.close()


def _stopper(worker: WorkerProcess) -> Callable[[], None]:
    """Stop a retired spare (by then it has exited; bounded at ~0.3 s if it has not)."""
    return lambda: worker.stop(grace=0.1)


def _no_activation(worker: WorkerProcess) -> wire.ActivateMeta:
    raise RuntimeError("WorkerPool.activation was not set")


def _exited(worker: WorkerProcess) -> bool:
    """Whether the worker's sentinel says it is gone (the poll has not told us yet)."""
    try:
        return bool(select.select([worker.sentinel], [], [], 0)[0])
    except (OSError, ValueError):
        return True
