"""Building and sending Jupyter messages from the worker.

The worker signs its own messages with the kernel's key and the supervisor's
session id (so the frontend sees one session for the kernel's whole life);
the supervisor forwards the frames as they are.  Safe from any thread.

Every output has a parent: the request it answers.  As under ipykernel 7 the
parent belongs to the context that produces the output, not to the worker:

- :meth:`Messenger.set_parent` (each request, ``shell.set_parent``) sets it for
  the running asyncio context, which tasks created from it inherit, so a task
  a cell started keeps publishing to that cell after the next cell began;
- a thread takes the parent of the code that started it (the worker wraps
  ``threading.Thread.start``, :func:`record_thread_parents`); threads that
  were started outside any request (the worker's own, libraries' at import)
  follow the latest request;
- work submitted to a ``ThreadPoolExecutor`` (``loop.run_in_executor``
  included) takes the parent of the code that submitted it, not that of the
  cell whose submit happened to start the pool's thread;
- ``set_thread_parent`` sets it for the calling context only.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import wire
from ..signing import Signer, pack
from .link import Link


class Parent:
    """A request that outputs answer: the message, its header, the header as sent
    (reused verbatim, not packed again for every output) and its channel."""

    __slots__ = ("channel", "header", "msg", "raw")

    def __init__(self, msg: dict[str, Any], raw: bytes | None = None, channel: str = "shell") -> None:
        header = msg.get("header", msg) if msg else {}
        self.msg = msg if "header" in msg or not msg else {"header": header}
        self.header: dict[str, Any] = header
        self.raw = raw if raw is not None else pack(header)
        self.channel = channel


NO_PARENT = Parent({}, b"{}")


class Messenger:
    """Signs messages for the current request and sends them over the link."""

    def __init__(self, signer: Signer, link: Link) -> None:
        self.signer = signer
        self.link = link
        self._context_parent: contextvars.ContextVar[Parent] = contextvars.ContextVar("relaykernel_parent")
        #: the latest set_parent from any context: the parent of threads that have none
        self._latest = NO_PARENT

    @property
    def parent(self) -> dict[str, Any]:
        """Header of the request the calling context answers."""
        return self.current().header

    def current(self) -> Parent:
        """The parent of output produced here (see the module docstring)."""
        try:
            return self._context_parent.get()
        except LookupError:
            pass
        parent = getattr(threading.current_thread(), "_relaykernel_parent", None)
        return parent if parent is not None else self._latest

    def set_parent(self, msg: dict[str, Any], raw: bytes | None = None, channel: str = "shell",
                   latest: bool = True) -> Parent:
        """Outputs of this context (and of the tasks and threads it starts) answer
        ``msg`` (a message or a header); ``raw`` is its header as received.
        ``latest=False``: threads without a parent do not follow it (a subshell's)."""
        parent = Parent(msg, raw, channel)
        self._context_parent.set(parent)
        if latest:
            self._latest = parent
        return parent

    def set_thread_parent(self, msg: dict[str, Any]) -> contextvars.Token[Parent]:
        """Outputs of the calling context only answer ``msg``; returns a token for
        :meth:`reset_thread_parent`."""
        return self._context_parent.set(Parent(msg))

    def reset_thread_parent(self, token: contextvars.Token[Parent]) -> None:
        self._context_parent.reset(token)

    def frames(self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any] | None = None,
               parent: Parent | None = None) -> list[bytes]:
        """Signed wire frames, from the delimiter on."""
        raw = (parent or self.current()).raw
        return self.signer.frames(msg_type, content, raw, metadata)

    def publish(self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any] | None = None,
                buffers: list[Any] | None = None, kind: bytes = wire.IOPUB, started: bool = False,
                parent: Parent | None = None, subshell_id: str | None = None) -> None:
        """Send an iopub message (signed, topic first) for the supervisor to publish.

        ``started`` marks the execute_input: the supervisor learns the cell (of
        ``subshell_id``'s lane) began.  ``parent``: the request it answers, if not
        the calling context's."""
        frames: list[Any] = [f"kernel.{msg_type}".encode(), *self.frames(msg_type, content, metadata, parent)]
        meta: dict[str, Any] | None = None
        if started:
            meta = {"started": True, "subshell_id": subshell_id} if subshell_id else {"started": True}
        if kind == wire.COMM:
            meta = {"msg_type": msg_type, "comm_id": content.get("comm_id")}
        if buffers:
            frames.extend(buffers)
        self.link.send(kind, meta, frames)

    def publish_stream(self, msg_type: str, content: dict[str, Any], parent: Parent | None) -> None:
        """The streams' publish (streams.OutputOrder): with the parent of the text's writer."""
        self.publish(msg_type, content, parent=parent)

    def done(self, reply_type: str | None, content: dict[str, Any] | None, meta: wire.DoneMeta,
             metadata: dict[str, Any] | None = None, parent: Parent | None = None) -> None:
        """Finish the current request: its signed reply (if it has one) and the DONE meta."""
        payload = self.frames(reply_type, content or {}, metadata, parent) if reply_type else []
        self.link.send(wire.DONE, meta, payload)

    def input_request(self, prompt: str, password: bool, subshell_id: str | None = None) -> None:
        self.link.send(wire.STDIN, {"subshell_id": subshell_id} if subshell_id else None,
                       self.frames("input_request", {"prompt": prompt, "password": password}))


def record_thread_parents(messenger: Messenger) -> None:
    """Make every thread started from now on publish to the request of the code that
    starts it (when that code has one): ``threading.Thread.start`` notes it on
    the thread, where :meth:`Messenger.current` finds it; and work submitted to
    a thread pool to the request of the code that submits it."""
    start = threading.Thread.start
    if getattr(start, "_relaykernel_records_parent", False):
        return

    def start_with_parent(self: threading.Thread) -> None:
        parent = messenger.current()
        if parent.header:
            self._relaykernel_parent = parent  # type: ignore[attr-defined]
        start(self)

    start_with_parent._relaykernel_records_parent = True  # type: ignore[attr-defined]
    start_with_parent.__doc__ = start.__doc__
    threading.Thread.start = start_with_parent  # type: ignore[method-assign]

    submit = ThreadPoolExecutor.submit

    def submit_with_parent(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any,
                           **kwargs: Any) -> Any:
        return submit(self, _run_with_parent, messenger, messenger.current(), fn, *args, **kwargs)

    submit_with_parent.__doc__ = submit.__doc__
    ThreadPoolExecutor.submit = submit_with_parent  # type: ignore[method-assign, assignment]


def _run_with_parent(messenger: Messenger, parent: Parent, fn: Callable[..., Any], /, *args: Any,
                     **kwargs: Any) -> Any:
    token = messenger._context_parent.set(parent)
    try:
        return fn(*args, **kwargs)
    finally:
        messenger._context_parent.reset(token)
