"""Kernel subshells (JEP 91, protocol 5.5): their ids, and create/delete/list.

Owned by the supervisor's main thread.  The supervisor owns the subshells: it
makes their ids, gives each a request queue of its own (flow.py's lanes) and
answers create/delete/list on control at once, whatever the worker is doing.
The ids outlive workers: a new worker starts a subshell's thread with the
subshell's first request (worker/subshells.py), so after a crash or a restart
the frontend's subshell ids still work, and requests queued on them run on the
new worker -- where ipykernel loses its subshells with its process.

Deleting a subshell answers at once: the request it is running finishes (its
reply still comes), the requests queued behind it are aborted, and its id is
unknown from then on (a request sent to it gets an error reply).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from .. import wire

if TYPE_CHECKING:
    from .flow import RequestFlow
    from .pool import WorkerPool
    from .sockets import Incoming

log = logging.getLogger("relaykernel.supervisor")


class UnknownSubshell(KeyError):
    def __str__(self) -> str:
        return f"Unknown subshell_id {self.args[0]!r}"


class Subshells:
    """create/delete/list_subshell_request, and telling the worker which exist."""

    def __init__(self, flow: RequestFlow, pool: WorkerPool) -> None:
        self.flow = flow
        self.out = flow.out
        self.pool = pool

    def ids(self) -> list[str]:
        return list(self.flow.lanes)

    def create(self, msg: Incoming) -> None:
        subshell_id = str(uuid.uuid4())
        self.flow.add_lane(subshell_id)
        self.out.reply(msg, {"status": "ok", "subshell_id": subshell_id})
        self.tell_worker()

    def delete(self, msg: Incoming) -> None:
        subshell_id = msg.content.get("subshell_id")
        if not isinstance(subshell_id, str) or subshell_id not in self.flow.lanes:
            self.out.reply(msg, wire.error_reply("UnknownSubshell", str(UnknownSubshell(subshell_id))))
            return
        aborted = self.flow.remove_lane(subshell_id)
        self.out.reply(msg, {"status": "ok"})
        self.flow.abort(aborted)
        self.tell_worker()

    def list(self, msg: Incoming) -> None:
        self.out.reply(msg, {"status": "ok", "subshell_id": self.ids()})

    def tell_worker(self) -> None:
        """The worker's list (for %subshell; the threads of deleted ones end)."""
        worker = self.pool.active
        if worker is not None:
            worker.send(wire.encode(wire.SUBSHELLS, {"ids": self.ids()}), side=True)

    def unknown(self, msg: Incoming) -> None:
        """A request for a subshell that does not exist: its one reply says so."""
        subshell_id = msg.header.get("subshell_id")
        log.warning("%s for unknown subshell %r", msg.msg_type, subshell_id)
        error = wire.error_reply("UnknownSubshell", str(UnknownSubshell(subshell_id)))
        if msg.msg_type == "execute_request":
            error["execution_count"] = self.flow.execution_count
        self.out.reply(msg, error)
