"""input() across the link: prompts out to the requesting frontend, the matching reply back.

Owned by the supervisor's main thread.  A prompt goes to the frontend that sent
the running request (its routing identities); an input_reply reaches the worker
only if it answers a prompt that is open now.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from .. import wire

if TYPE_CHECKING:
    import zmq

    from .flow import RequestFlow
    from .pool import WorkerPool
    from .sockets import Incoming
    from .worker_process import WorkerProcess

log = logging.getLogger("relaykernel.supervisor")


class StdinRelay:
    def __init__(self, stdin: zmq.Socket, pool: WorkerPool, flow: RequestFlow) -> None:
        self.stdin = stdin
        self.pool = pool
        self.flow = flow

    def prompt(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        """A STDIN link message: the worker's signed input_request for a lane's running request."""
        queue = self.flow.lane(lm.meta.get("subshell_id"))
        request = queue.current if queue is not None else None
        if worker is self.pool.active and request is not None:
            request.prompt_id = json.loads(wire.as_bytes(lm.payload[wire.SIGNED.header])).get("msg_id")
            wire.send_frames(self.stdin, request.idents + list(lm.payload))

    def input_reply(self, msg: Incoming) -> None:
        """Pass an input_reply to the worker only if it answers a prompt open now.

        A reply sent after its prompt was interrupted would otherwise answer the
        next input() of a later cell.  A reply without a parent (jupyter_client's
        ``KernelClient.input``) answers the open prompt (the main shell's first).
        A subshell's prompt is answered on the side socket: the worker's main
        thread may be running a cell."""
        worker = self.pool.active
        answered = msg.parent.get("msg_id")
        for lane_id, queue in self.flow.all_lanes():
            request = queue.current
            if request is None or request.prompt_id is None:
                continue
            if answered is not None and answered != request.prompt_id:
                continue
            if worker is None:
                break
            request.prompt_id = None
            if lane_id is None:
                worker.send(wire.encode(wire.INPUT_REPLY, None, msg.frames))
            else:
                worker.send(wire.encode(wire.INPUT_REPLY, {"subshell_id": lane_id}, msg.frames), side=True)
            return
        log.warning("input_reply dropped: it answers no prompt open now")
