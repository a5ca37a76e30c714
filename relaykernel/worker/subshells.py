"""Subshells (JEP 91) in the worker: a thread each, sharing the user namespace.

The supervisor owns the subshells: it creates, lists and deletes them, keeps
their ids across workers, queues their requests and decides when one runs
beside another (supervisor/flow.py).  This side runs what it is sent.  A
subshell's requests arrive on the side socket (side.py) and run one at a
time on the subshell's thread, in an asyncio loop of its own (top-level await
and tasks work there as in the main shell); a thread starts with its
subshell's first request, so a new worker has the same subshells as soon as
they are used.

Outputs carry the parent header of the request that produced them: each
thread (and task) has its own context parent (messages.py).  ``input()`` in a
subshell sends its prompt on the link and waits here for the reply, which the
side thread routes by subshell id.

One more lane runs comm messages *beside the main shell's cell*
(:data:`wire.BESIDE_CELL`): while a cell of the main shell runs, the supervisor
sends the main shell's comm messages here, and they run as tasks of the main
thread's event loop, as soon as the cell awaits (a cell that awaits a widget's
answer gets it, as under ipykernel 7); a cell that never awaits sees them
after it ends.

Must not import IPython.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from .. import wire

log = logging.getLogger("relaykernel.worker")

#: Runs one request: handle(frames, channel, subshell_id) (kernel.WorkerKernel.handle).
Handle = Callable[[list[Any], str, "str | None"], Coroutine[Any, Any, None]]


class SubshellThread:
    """One subshell: its thread, its loop, its inbox and its input replies."""

    def __init__(self, subshell_id: str, handle: Handle) -> None:
        self.id = subshell_id
        self._handle = handle
        self.input_replies: queue.SimpleQueue[wire.LinkMessage] = queue.SimpleQueue()
        #: a request is running (snapshots wait; an interrupt reaches it)
        self.busy = False
        self._loop = asyncio.new_event_loop()
        self._inbox: asyncio.Queue[wire.LinkMessage | None] | None = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"relaykernel-subshell-{subshell_id[:8]}",
                                       daemon=True)
        self.thread.start()
        self._started.wait(5.0)

    def submit(self, lm: wire.LinkMessage | None) -> None:
        """Queue a request (None: stop once the queued ones ran); from any thread."""
        self._loop.call_soon_threadsafe(self._put, lm)

    def _put(self, lm: wire.LinkMessage | None) -> None:
        assert self._inbox is not None
        self._inbox.put_nowait(lm)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        _current.subshell = self
        self._inbox = asyncio.Queue()
        self._started.set()
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        assert self._inbox is not None
        while (lm := await self._inbox.get()) is not None:
            self.busy = True
            try:
                await self._handle(list(lm.payload), "shell", self.id)
            finally:
                self.busy = False

    def read_input(self) -> wire.LinkMessage:
        """The reply to this subshell's open prompt (blocks; an interrupt still lands:
        the wait is in short steps, between which an async exception is raised)."""
        while True:
            try:
                return self.input_replies.get(timeout=0.1)
            except queue.Empty:
                continue


class _Current(threading.local):
    subshell: SubshellThread | None = None


_current = _Current()


def current() -> SubshellThread | None:
    """The subshell the calling thread runs (None: the main shell)."""
    return _current.subshell


class Subshells:
    """The worker's subshells, by id, and the lane beside the main shell's cell."""

    def __init__(self, handle: Handle) -> None:
        self._handle = handle
        self.threads: dict[str, SubshellThread] = {}
        #: the subshells the supervisor says exist (for %subshell)
        self.ids: list[str] = []
        #: the main thread's running event loop (main.py sets it)
        self.main_loop: asyncio.AbstractEventLoop | None = None
        self._beside_lock: asyncio.Lock | None = None

    def install(self, handlers: dict[bytes, Callable[[wire.LinkMessage], None]]) -> None:
        """Take the side socket's kinds this module handles."""
        handlers[wire.REQUEST] = self.request
        handlers[wire.INPUT_REPLY] = self.input_reply
        handlers[wire.SUBSHELLS] = self.listed

    # ------------------------------------------------------- side thread
    def request(self, lm: wire.LinkMessage) -> None:
        subshell_id = str(lm.meta.get("subshell_id") or "")
        if subshell_id == wire.BESIDE_CELL:
            self._beside(lm)
            return
        thread = self.threads.get(subshell_id)
        if thread is None or not thread.thread.is_alive():
            thread = self.threads[subshell_id] = SubshellThread(subshell_id, self._handle)
        thread.submit(lm)

    def input_reply(self, lm: wire.LinkMessage) -> None:
        thread = self.threads.get(str(lm.meta.get("subshell_id") or ""))
        if thread is not None:
            thread.input_replies.put(lm)
        else:
            log.warning("input_reply for subshell %r, which has no thread", lm.meta.get("subshell_id"))

    def listed(self, lm: wire.LinkMessage) -> None:
        """The supervisor's list: threads of deleted subshells stop once their queue ran."""
        self.ids = [str(i) for i in lm.meta.get("ids", ())]
        for subshell_id in list(self.threads):
            if subshell_id not in self.ids:
                self.threads.pop(subshell_id).submit(None)

    def _beside(self, lm: wire.LinkMessage) -> None:
        loop = self.main_loop
        if loop is None:
            log.warning("a comm message beside the cell came before the main loop ran; dropped")
            return
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._run_beside(lm)))

    async def _run_beside(self, lm: wire.LinkMessage) -> None:
        if self._beside_lock is None:
            self._beside_lock = asyncio.Lock()
        async with self._beside_lock:  # one at a time, in arrival order
            await self._handle(list(lm.payload), "shell", wire.BESIDE_CELL)

    # ------------------------------------------------------- snapshots
    def busy(self) -> bool:
        return any(t.busy for t in self.threads.values())

    def forget(self) -> None:
        """In a snapshot's child: the threads did not survive the fork; they start again
        with their subshell's next request."""
        self.threads.clear()
        self._beside_lock = None
