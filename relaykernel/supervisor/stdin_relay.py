"""input() across the link: prompts out to the requesting frontend, the matching reply back.

Owned by the supervisor's main thread.  A prompt goes to the frontend that sent
the running request (its routing identities); an input_reply reaches the worker
only if it answers the prompt that is open now.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from .. import wire

if TYPE_CHECKING:
    import zmq

    from .pool import WorkerPool
    from .shell_queue import ShellQueue
    from .sockets import Incoming
    from .worker_process import WorkerProcess

log = logging.getLogger("relaykernel.supervisor")


class StdinRelay:
    def __init__(self, stdin: zmq.Socket, pool: WorkerPool, queue: ShellQueue) -> None:
        self.stdin = stdin
        self.pool = pool
        self.queue = queue

    def prompt(self, worker: WorkerProcess, lm: wire.LinkMessage) -> None:
        """A STDIN link message: the worker's signed input_request for the running request."""
        request = self.queue.current
        if worker is self.pool.active and request is not None:
            request.prompt_id = json.loads(wire.as_bytes(lm.payload[wire.SIGNED.header])).get("msg_id")
            wire.send_frames(self.stdin, request.idents + list(lm.payload))

    def input_reply(self, msg: Incoming) -> None:
        """Pass an input_reply to the worker only if it answers the open prompt.

        A reply sent after its prompt was interrupted would otherwise answer the
        next input() of a later cell.  A reply without a parent (jupyter_client's
        ``KernelClient.input``) answers whichever prompt is open."""
        request = self.queue.current
        worker = self.pool.active
        if worker is None or request is None or request.prompt_id is None:
            log.warning("input_reply dropped: no input() is waiting for one")
            return
        if msg.parent.get("msg_id", request.prompt_id) != request.prompt_id:
            log.warning("input_reply dropped: it answers another prompt than the open one")
            return
        request.prompt_id = None
        worker.send(wire.encode(wire.INPUT_REPLY, None, msg.frames))
