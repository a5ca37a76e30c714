"""What a worker's death means for the requests, and the replacement that follows.

Owned by the supervisor's main thread.  When the active worker dies (its
sentinel fired) or is replaced on purpose (memory limit, interrupt grace,
restart), every request it held gets exactly one answer: the one it was
running gets the death's error, those it finished without its DONE arriving
are asked again (if they change nothing) or told their reply was lost, and
those it never began go to the next worker.  A spare's death only counts
against the pool's start budget.  The wording is crash_report.py's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import zmq

from .. import wire
from .crash_report import WORKER_DIED, Death, Rollback, read_crash_log
from .shell_queue import ShellQueue, stops_on_error
from .worker_process import WorkerProcess, WorkerState

if TYPE_CHECKING:
    from .comm_relay import CommRelay
    from .flow import RequestFlow
    from .pool import WorkerPool
    from .sockets import Incoming

log = logging.getLogger("relaykernel.supervisor")

RESTARTED = "the kernel was restarted"
#: Requests that change nothing, so that one whose reply a dying worker lost is
#: asked again of the next worker rather than answered with an error.
REPEATABLE = frozenset({"complete_request", "inspect_request", "is_complete_request", "history_request"})
#: A dead worker's link is read until it has been quiet this long (ms): what the
#: worker sent just before dying may still be passing through the IO threads.
DEAD_LINK_QUIET_MS = 10


class Recovery:
    """Turns worker deaths into replies, requeues and a fresh worker."""

    def __init__(self, pool: WorkerPool, flow: RequestFlow, comms: CommRelay,
                 drain_link: Callable[[WorkerProcess], None], drain_shell: Callable[[], None]) -> None:
        self.pool = pool
        self.flow = flow
        self.out = flow.out
        self.comms = comms
        self._drain_link = drain_link
        self._drain_shell = drain_shell
        #: called when the active worker is gone (the loop sets debug_relay's)
        self.active_gone: Callable[[], None] = lambda: None

    def worker_exited(self, worker: WorkerProcess) -> None:
        """A worker's sentinel fired: the active one's requests are answered, a spare is counted."""
        # Outputs it sent before dying still belong to the user, and a DONE still
        # on its way says the request it ends was not the one that killed the worker.
        self._drain_link(worker)
        while worker.state is not WorkerState.GONE and worker.link.poll(DEAD_LINK_QUIET_MS, zmq.POLLIN):
            self._drain_link(worker)
        was_active = worker is self.pool.active
        was_starting = worker.state is WorkerState.STARTING
        was_restoring = worker is self.pool.restoring
        rollback = self._roll_back(worker) if was_active else None
        death = Death(self.pool.exit_of(worker), crash_log=read_crash_log(worker.config.crash_log),
                      unread_output=worker.unread_output(), rollback=rollback)
        running = worker.requests_running()
        self.pool.forget(worker)
        worker.close()
        if was_active:
            log.info("active worker %s died: %s", worker.number, death.exit.describe())
            # queue what the frontend sent before it could know: with stop_on_error
            # those executes are aborted, whichever poll event came first
            self._drain_shell()
            self._recover(death, running)
        elif was_restoring:  # its error reply said it would take over: say that it could not
            log.warning("snapshot worker %s died before it took over: %s", worker.number, death.exit.describe())
            self.out.stream(None, "stderr", "relaykernel: the snapshot could not take over "
                                            f"({death.exit.describe()}); a fresh worker, with no variables, "
                                            "runs the next cells.\n")
        else:
            log.warning("spare worker %s died before use: %s", worker.number, death.exit.describe())
            if self.pool.spare_died(was_starting):
                if self.pool.cannot_start:
                    self._fail_queued(death)  # nothing can run them: say so rather than wait
                return
        self.pool.ensure()

    def restart(self) -> None:
        """A restart the user asked for: fresh worker and namespace, count from 1, comms kept."""
        self.flow.execution_count = 1
        self.replace_active(RESTARTED, restart=True)

    def replace_active(self, reason: str, restart: bool = False) -> None:
        worker = self.pool.take_active()
        if worker is None:
            return
        worker.kill()
        if restart:  # a deliberate reset: the next worker starts empty
            self.pool.drop_snapshot(worker)
        rollback = None if restart else self._roll_back(worker)
        # a worker replaced past its interrupt's grace wrote its stack there (answers.py)
        crash_log = "" if restart else read_crash_log(worker.config.crash_log)
        death = Death(self.pool.exit_of(worker, timeout=2.0), reason=reason, restart=restart, crash_log=crash_log,
                      unread_output=worker.unread_output(), rollback=rollback)
        running = worker.requests_running()
        worker.close()
        self._recover(death, running)
        self.pool.ensure()

    def _roll_back(self, worker: WorkerProcess) -> Rollback:
        """Wake the dead worker's snapshot (pool.py), and say what that restores."""
        snapshot = self.pool.roll_back(worker)
        if isinstance(snapshot, str):
            return Rollback(why_not=snapshot)
        return Rollback(snapshot.execution_count, self.flow.execution_count, snapshot.names)

    def _recover(self, death: Death, running: int | None) -> None:
        """Give the request the worker was running its one reply, then abort or keep the queue.

        Of the requests sent to the dead worker, the oldest may have finished
        with their DONE lost (progress.py): those that change nothing are asked
        again of the next worker, the others get an error that says so.  Then
        comes the one that was running, which gets the death's error; the rest
        never began and go to the next worker.  ``running``: how many
        requests the worker began and did not report done (None: unknown)."""
        self.active_gone()
        queue = self.flow.queue
        running = 1 if running is None else running  # unknown: the oldest one sent
        again: list[Incoming] = []
        for _ in range(running - 1):
            finished = queue.finish()
            if finished is None:
                break
            if finished.msg_type in REPEATABLE:
                again.append(finished)
            else:
                self._reply_lost(finished, death)
        request = queue.finish() if running > 0 else None
        queue.requeue_sent()  # never started: run on the next worker
        queue.requeue(again)
        # Subshells and the lane beside the cell: each ran its oldest request sent
        # (their DONEs come on the link, drained already); the rest never began.
        others = []
        for _, lane in list(self.flow.all_lanes())[1:]:
            running_there = lane.finish()
            lane.requeue_sent()
            if running_there is not None:
                others.append((lane, running_there))
        if request is None and not others:
            self._last_output(None, death)
            if not death.restart:  # a restart of an idle kernel needs no words
                self.out.stream(None, "stderr", death.report(len(self.comms)))
            return
        if request is not None:
            self._fail_running(request, death)
        for i, (lane, running_there) in enumerate(others):
            self._fail_running(running_there, death, lane, last_output=request is None and i == 0)
        self.flow.forget_finished_lanes()

    def _fail_running(self, request: Incoming, death: Death, queue: ShellQueue | None = None,
                      last_output: bool = True) -> None:
        """The death's error for the request the worker was running, with what it printed last."""
        self.flow.announce(request)
        is_execute = request.msg_type == "execute_request"
        if is_execute and not request.started and not request.content.get("silent"):
            # the worker died before its execute_input left: the cell must still show up
            self.out.publish(request, "execute_input", {"code": request.content.get("code", ""),
                                                       "execution_count": self.flow.execution_count})
        if last_output:
            self._last_output(request, death)
        if is_execute:  # its error output says it all; no second copy
            if last_words := death.last_words():
                self.out.stream(request, "stderr", last_words)
        else:  # a comm message or another request: the stream is the only place to say it
            self.out.stream(request, "stderr", death.report(len(self.comms)))
        error = wire.error_reply(WORKER_DIED, death.evalue, death.traceback(len(self.comms)))
        if is_execute:
            error["execution_count"] = self.flow.execution_count
            if not request.content.get("silent") and request.content.get("store_history", True):
                self.flow.execution_count += 1
            self.out.publish(request, "error", {k: error[k] for k in ("ename", "evalue", "traceback")})
        self.out.reply(request, error if request.msg_type.endswith("_request") else None)
        self.out.status("idle", request)
        if is_execute and stops_on_error(request):
            self.flow.abort((queue or self.flow.queue).take_executes())

    def _last_output(self, request: Incoming | None, death: Death) -> None:
        """What the dead worker wrote last and could not forward, shown before the report:
        it often names the crash (an assertion message before abort())."""
        for name in ("stdout", "stderr"):
            text = death.unread_output.get(name)
            if text:
                self.out.stream(request, name, text)

    def _reply_lost(self, request: Incoming, death: Death) -> None:
        """A request the worker finished just before it died, whose reply died with it."""
        self.flow.answer(request, wire.error_reply(
            WORKER_DIED, f"{death.evalue}, right after it finished this {request.msg_type}; its reply was lost"))

    def _fail_queued(self, death: Death) -> None:
        for request in [r for _, lane in self.flow.all_lanes() for r in lane.take_pending()]:
            self.flow.announce(request)
            self.out.stream(request, "stderr", "relaykernel: no worker could start: "
                                                f"{death.exit.describe()}\n{death.crash_log}")
            self.flow.answer(request, wire.error_reply("WorkerStartFailed", death.exit.describe()))
