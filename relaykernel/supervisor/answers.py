"""The requests the supervisor answers itself, at once, whatever the worker is doing:
kernel_info, comm_info, connect, usage, interrupt and shutdown (debug_request: debug_relay.py).

Owned by the supervisor's main thread.  The loop publishes busy/idle around
each; a handler only replies (and acts).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import CONNECTION_FILE_ENV, wire
from .kernel_info import kernel_info_content
from .resources import Usage
from .shell_queue import stops_on_error

if TYPE_CHECKING:
    from .comm_relay import CommRelay
    from .flow import RequestFlow
    from .housekeeping import Timers
    from .pool import WorkerPool
    from .recovery import Recovery
    from .sockets import Incoming

log = logging.getLogger("relaykernel.supervisor")

#: Seconds between asking a worker that ignored an interrupt for its stack
#: (wire.STACK_SIGNAL) and replacing it: faulthandler writes it in well under 1 ms.
STACK_WAIT = 0.1


class Answers:
    """Handlers of the supervisor's own requests, by message type (``shell`` and ``control``;
    the loop adds subshells.py's)."""

    def __init__(self, *, flow: RequestFlow, comms: CommRelay, pool: WorkerPool, recovery: Recovery,
                 timers: Timers, stop: Callable[[], None], interrupt_grace: float,
                 inplace_restart: bool) -> None:
        self.flow = flow
        self.out = flow.out
        self.comms = comms
        self.pool = pool
        self.recovery = recovery
        self.timers = timers
        self.stop = stop
        self.interrupt_grace = interrupt_grace
        self.inplace_restart = inplace_restart
        self.usage = Usage()
        self.shell: dict[str, Callable[[Incoming], None]] = {
            "kernel_info_request": self.kernel_info,
            "comm_info_request": self.comm_info,
            "connect_request": self.connect,  # deprecated; ipykernel still answers it
            "shutdown_request": self.shutdown,  # its channel before protocol 5.1; ipykernel takes it too
        }
        self.control: dict[str, Callable[[Incoming], None]] = {
            **self.shell,
            "interrupt_request": self.interrupt_request,
            "usage_request": self.usage_request,
        }

    def kernel_info(self, msg: Incoming) -> None:
        self.out.reply(msg, kernel_info_content())

    def comm_info(self, msg: Incoming) -> None:
        target = msg.content.get("target_name")
        self.out.reply(msg, {"status": "ok", "comms": self.comms.info(target or None)})

    def connect(self, msg: Incoming) -> None:
        """The kernel's ports, as ipykernel answers the deprecated connect_request."""
        self.out.reply(msg, {**_ports(os.environ.get(CONNECTION_FILE_ENV, "")), "status": "ok"})

    def usage_request(self, msg: Incoming) -> None:
        active = self.pool.active
        snapshot = active.snapshot if active else None
        self.out.reply(msg, self.usage.reply(active.pid if active else None, snapshot.pid if snapshot else 0))

    def shutdown(self, msg: Incoming) -> None:
        restart = bool(msg.content.get("restart", False))
        content = {"status": "ok", "restart": restart}
        self.out.reply(msg, content)
        self.out.publish(msg, "shutdown_reply", content)  # for every frontend, as the spec asks
        if restart and self.inplace_restart:
            self.recovery.restart()
        else:
            self.stop()

    def interrupt_request(self, msg: Incoming) -> None:
        self.interrupt()
        self.out.reply(msg, {"status": "ok"})

    def interrupt(self) -> None:
        """SIGINT the running cell; replace the worker if it has not stopped after the grace period.
        Before a worker is ready to run requests, the execute waiting is interrupted instead."""
        worker = self.pool.active_ready()
        if worker is None:  # none active yet, or still ACTIVATING: nothing runs
            self.interrupt_waiting()
            return
        worker.signal(signal.SIGINT)
        running = self.flow.requests_running()
        if any(queue is not self.flow.queue for queue, _ in running):  # kernel-wide: subshells too
            worker.send(wire.encode(wire.INTERRUPT), side=True)
        if running and self.interrupt_grace > 0:
            def still_running() -> bool:
                return self.pool.active is worker and any(queue.current is r for queue, r in running)

            def replace() -> None:
                if still_running():
                    self.recovery.replace_active(
                        f"the cell did not stop within {self.interrupt_grace:g} s of the interrupt,"
                        " so the worker was replaced")

            def hard_interrupt() -> None:
                if still_running():
                    log.warning("worker ignored SIGINT for %.1fs; replacing it", self.interrupt_grace)
                    # where the cell is stuck goes to the worker's crash log, then into its error
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(worker.pid, wire.STACK_SIGNAL)
                    self.timers.after(STACK_WAIT, replace)
            self.timers.after(self.interrupt_grace, hard_interrupt)

    def interrupt_waiting(self, among: list[Incoming] | None = None) -> None:
        """An interrupt with no worker to signal: the first execute_request waiting (of
        ``among``, the requests that came before it, if given) ends with KeyboardInterrupt
        without running, and with stop_on_error the executes queued after it are aborted,
        as if it had been interrupted as it started.  With none waiting there is nothing
        to interrupt, as for an idle kernel.  Never a signal to a worker that is not
        running requests yet (it would not stop a cell, and could cost it the grace period)."""
        queue = self.flow.queue
        if self.pool.active_ready() is not None:  # the worker took the requests meanwhile
            if queue.current is not None and (among is None or any(queue.current is m for m in among)):
                self.interrupt()
            return
        waiting = queue.take_pending()
        target = next((r for r in waiting if r.msg_type == "execute_request"
                       and (among is None or any(r is m for m in among))), None)
        queue.requeue([r for r in waiting if r is not target])
        if target is None:
            log.info("interrupt: no cell is running or waiting")
            return
        error = wire.error_reply("KeyboardInterrupt", "", [
            "KeyboardInterrupt: the kernel was interrupted before this cell started; it did not run"])
        self.flow.announce(target)
        self.out.publish(target, "error", error)
        self.out.reply(target, {**error, "execution_count": self.flow.execution_count})
        self.out.status("idle", target)
        if stops_on_error(target):
            self.flow.abort(queue.take_executes())

def _ports(connection_file: str) -> dict[str, int]:
    """``shell_port``, ``iopub_port``... from the connection file (the app set its
    path before the loop ran); none if it cannot be read."""
    try:
        with open(connection_file) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return {name: info[name] for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
            if isinstance(info.get(name), int)}
