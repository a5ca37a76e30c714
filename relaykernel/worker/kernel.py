"""The worker's request handlers: execute, complete, inspect, history, comms, stdin.

Runs in the worker's main thread, one request at a time, as the supervisor
sends them.  Reachable from user code as ``get_ipython().kernel``.  Every
request ends with exactly one DONE on the link, whatever happens inside it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import datetime
import getpass
import importlib
import inspect
import json
import logging
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from IPython.core.async_helpers import _asyncio_runner
from IPython.core.completer import provisionalcompleter, rectify_completions
from IPython.core.error import StdinNotImplementedError
from IPython.utils.tokenutil import token_at_cursor

from .. import wire
from ..comm import CommManager
from .interrupts import InterruptGate
from .link import Link
from .messages import Messenger
from .session_compat import IOPubRelay, make_session
from .streams import FdCapture, OutStream
from .subshells import Subshells
from .subshells import current as current_subshell

log = logging.getLogger("relaykernel.worker")

#: Per request, so that requests of subshells (threads) and comm messages handled
#: while a cell awaits (tasks) keep their own: the reply's metadata (execute's
#: timing), and whether the request allows input().
_reply_metadata: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "relaykernel_reply_metadata", default=None)
_allow_stdin: contextvars.ContextVar[bool] = contextvars.ContextVar("relaykernel_allow_stdin", default=False)

Outcome = tuple["dict[str, Any] | None", wire.DoneMeta]  # the reply's content (or None), the DONE meta
Handler = Callable[[dict[str, Any]], "Outcome | Awaitable[Outcome]"]


class WorkerKernel:
    """What ipykernel calls the kernel, for the worker half of relaykernel."""

    def __init__(self, link: Link, messenger: Messenger, streams: tuple[OutStream, OutStream],
                 fd_capture: FdCapture | None) -> None:
        self.link = link
        self.messenger = messenger
        self.stdout, self.stderr = streams
        self.fd_capture = fd_capture
        self.shell: Any = None
        self.comm_manager = CommManager(kernel=self)
        self.last_error: dict[str, Any] | None = None
        #: the latest request that came on each channel, for get_parent(channel)
        self._control_parent: dict[str, Any] = {}
        self._shell_parent: dict[str, Any] = {}
        #: names this worker in execute_reply metadata, as ipykernel's engine id does
        self.engine_id = str(uuid.uuid4())
        self.gate = InterruptGate()
        #: subshells (JEP 91) and the lane beside the main shell's cell
        self.subshells = Subshells(self.handle)
        #: for code written against ipykernel: kernel.session.send(kernel.iopub_socket, ...)
        self.iopub_socket = IOPubRelay(self)
        self._session: Any = None
        self.log = log
        self.handlers: dict[str, Handler] = {
            "execute_request": self.execute_request,
            # completion and inspection run user code too (__dir__, __repr__, properties)
            "complete_request": self._interruptible(self.complete_request),
            "inspect_request": self._interruptible(self.inspect_request),
            "history_request": self._interruptible(self.history_request),
            "is_complete_request": self._interruptible(self.is_complete_request),
            "comm_open": self._comm_handler(self.comm_manager.comm_open),
            "comm_msg": self._comm_handler(self.comm_manager.comm_msg),
            "comm_close": self._comm_handler(self.comm_manager.comm_close),
        }
        builtins.input = self.raw_input
        getpass.getpass = self.getpass

    # ------------------------------------------------------------- plumbing
    def flush_streams(self, fds: bool = True) -> None:
        """Send pending stdout/stderr now, so they precede what is sent next.

        ``fds=False`` skips draining the fd pipes (a syscall or three): comm
        traffic, which can be thousands of messages a second, only orders
        itself after Python-level prints; requests still drain fds at their end.
        """
        if fds and self.fd_capture is not None:
            self.fd_capture.drain()
        self.stdout.send_now()  # both streams' text, in written order

    def send_comm(self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any],
                  buffers: list[Any] | None) -> None:
        self.flush_streams(fds=False)
        self.messenger.publish(msg_type, content, metadata, list(buffers or ()), kind=wire.COMM)

    def target_changed(self, name: str, registered: bool) -> None:
        target: wire.TargetMeta = {"name": name, "registered": registered}
        self.link.send(wire.TARGET, target)

    @property
    def session(self) -> Any:
        """jupyter_client's Session, signing as the kernel does (made on first use)."""
        if self._session is None:
            self._session = make_session(self.messenger.signer)
        return self._session

    def send_response(self, stream: Any, msg_or_type: Any, content: Any = None, ident: Any = None,
                      buffers: Any = None, track: bool = False, header: Any = None,
                      metadata: Any = None, channel: str = "shell") -> Any:
        """ipykernel's helper: send with the request being handled as the parent."""
        return self.session.send(stream, msg_or_type, content, self.get_parent(channel), ident,
                                 buffers, track, header, metadata)

    @property
    def execution_count(self) -> int:
        return int(self.shell.execution_count)

    @property
    def _parent_header(self) -> dict[str, Any]:  # what ipywidgets 7 and older libraries read
        return self.get_parent()

    def get_parent(self, channel: str | None = None) -> dict[str, Any]:
        """The request the calling context answers (ipywidgets' Output and interact
        use its msg_id): the cell that started this task or thread, or the request
        being handled; ``'control'``: the latest control request, as in ipykernel
        (``'shell'`` while a control request runs: the latest shell request)."""
        if channel == "control":
            return self._control_parent
        parent = self.messenger.current()
        if channel == "shell" and parent.channel == "control":
            return self._shell_parent
        return parent.msg

    def set_parent(self, ident: Any, parent: dict[str, Any], channel: str = "shell") -> None:
        """ipykernel's: outputs of the calling context answer ``parent`` from now on."""
        if channel == "control":
            self._control_parent = parent
        else:
            self._shell_parent = parent
        self.messenger.set_parent(parent, channel=channel)

    def activate(self, meta: wire.ActivateMeta) -> None:
        """Become the kernel's worker: continue its execution count, and import
        what preserved comms need (ipywidgets registers its targets on import)."""
        self.shell.execution_count = int(meta.get("execution_count", 1))
        logging.getLogger("relaykernel").setLevel(int(meta.get("log_level", logging.WARNING)))
        limit = int(meta.get("memory_soft_limit") or 0)
        if limit:
            self.gate.memory_error = lambda: MemoryError(
                f"relaykernel: the worker passed its soft memory limit of {limit / 1024**3:g} GiB, "
                "so this cell was interrupted. Your variables are kept; free some memory "
                "(del large objects) before going on.")
        for module in meta.get("imports", ()):
            try:
                importlib.import_module(module)
            except Exception as e:
                log.warning("could not import %s to restore its comms: %s", module, e)

    def adopt(self, meta: dict[str, Any], frames: list[Any]) -> None:
        """Re-create comms that outlived the previous worker, through their target.

        Unlike a frontend comm_open, a failure here does not close the comm: the
        frontend keeps it, and a later worker may still adopt it.
        """
        self.messenger.set_parent({})
        offset = 0
        comms: list[wire.AdoptedComm] = meta.get("comms", [])
        for spec in comms:
            count = int(spec.get("buffers", 0))
            buffers = [memoryview(f) for f in frames[offset:offset + count]]
            offset += count
            content = spec["content"]
            msg = {"header": {"msg_type": "comm_open", "msg_id": ""}, "parent_header": {},
                   "metadata": spec.get("metadata") or {}, "content": content, "buffers": buffers}
            try:
                self.comm_manager.adopt(msg)
            except Exception as e:
                log.warning("could not adopt comm %s: %s", content.get("comm_id"), e)
        self.flush_streams()

    async def handle(self, frames: list[Any], channel: str = "shell", subshell_id: str | None = None) -> None:
        """Run one request and send its DONE, even if the handler raises or is interrupted.

        ``channel``: where the request came from (``shell`` or ``control``);
        ``subshell_id``: the subshell (thread, or the lane beside the cell) it runs
        in, None for the main shell.  Streams (and fd pipes) are flushed once,
        here, right before the DONE."""
        self.gate.thread_request()  # a subshell's: an interrupt from now on is this request's
        reply: dict[str, Any] | None = None
        meta: wire.DoneMeta = {"status": "ok"}
        msg_type = ""
        parent = None  # the reply answers the request even if user code set another parent
        _reply_metadata.set(None)
        try:
            # the supervisor checked every part, so this fails only on a broken link
            msg = _parse(frames)
            msg_type = str(msg["msg_type"] or "")
            if channel == "control":
                self._control_parent = msg
            else:
                self._shell_parent = msg
            parent = self.messenger.set_parent(msg, wire.as_bytes(frames[wire.VERIFIED.header]), channel,
                                               latest=subshell_id is None)
            self._restore_lost_streams()
            handler = self.handlers.get(msg_type)
            if handler is None:
                log.warning("unknown request type %r", msg_type)
                reply, meta = wire.unknown_request_error(msg_type, "shell"), {"status": "error"}
            else:
                outcome = handler(msg)
                if inspect.isawaitable(outcome):  # execute_request: cells may await
                    outcome = await outcome
                reply, meta = outcome
        except BaseException as e:  # a late KeyboardInterrupt must not lose the reply
            error = wire.error_reply(type(e).__name__, str(e))
            if msg_type == "execute_request":
                error.update(execution_count=self.shell.execution_count - 1, user_expressions={})
            reply, meta = (error if msg_type.endswith("_request") else None), {"status": "error"}
        finally:
            self.flush_streams()
            reply_type = msg_type[: -len("request")] + "reply" if msg_type.endswith("_request") else None
            if subshell_id is not None:
                meta["subshell_id"] = subshell_id
            self.messenger.done(reply_type if reply is not None else None, reply, meta, _reply_metadata.get(),
                                parent)

    def _restore_lost_streams(self) -> None:
        """A cell that set sys.stdout or sys.stderr to None (or anything that cannot
        write) broke every later request, IPython's own writes included: put ours
        back, and say so.  A stream redirected elsewhere that writes is left alone."""
        for name, ours in (("stdout", self.stdout), ("stderr", self.stderr)):
            lost = getattr(sys, name, None)
            if not callable(getattr(lost, "write", None)):
                setattr(sys, name, ours)
                self.stderr.write(f"relaykernel: sys.{name} was {lost!r}, which cannot be written to; "
                                  f"the kernel's {name} is back in its place.\n")

    # -------------------------------------------------------------- execute
    async def execute_request(self, msg: dict[str, Any]) -> tuple[dict[str, Any], wire.DoneMeta]:
        started = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        content = msg["content"]
        code = content.get("code", "")
        silent = bool(content.get("silent", False))
        store_history = bool(content.get("store_history", not silent))
        _allow_stdin.set(bool(content.get("allow_stdin", False)))
        shell = self.shell
        count = shell.execution_count
        if not silent:
            subshell = current_subshell()
            self.messenger.publish("execute_input", {"code": code, "execution_count": count},
                                   started=True, subshell_id=subshell.id if subshell else None)
        self.last_error = None
        shell.displayhook_failed = False
        # JupyterLab's cell id; run_cell hands both to pre_run_cell handlers, as under ipykernel
        cell_meta = msg.get("metadata") or {}
        cell_id = cell_meta.get("cellId")
        result = await self._run_cell(code, store_history, silent, cell_id, cell_meta)
        if threading.current_thread() is threading.main_thread():  # where the soft limit raises
            self.gate.release_memory_error()
        # Like ipykernel: the number of the last stored cell (this one, if it was stored).
        reply: dict[str, Any] = {"execution_count": shell.execution_count - 1}
        if result.success and not shell.displayhook_failed:
            reply["status"] = "ok"
            reply["user_expressions"] = shell.user_expressions(content.get("user_expressions") or {})
        else:
            reply["status"] = "error"
            reply.update(self.last_error or _error_of(result.error_in_exec or result.error_before_exec))
            reply["user_expressions"] = {}
        reply["payload"] = shell.payload_manager.read_payload()
        shell.payload_manager.clear_payload()
        _allow_stdin.set(False)
        # what ipykernel puts there; JupyterLab's "record timing" reads "started"
        _reply_metadata.set({"started": started, "dependencies_met": True, "engine": self.engine_id,
                             "status": reply["status"]})
        meta: wire.DoneMeta = {"status": reply["status"], "execution_count": shell.execution_count}
        if shell.exit_now:  # exit() / quit: under ipykernel the kernel ends and is restarted
            shell.exit_now = False
            meta["exit"] = not shell.keepkernel_on_exit
            shell.keepkernel_on_exit = False
            if meta["exit"] and not silent:  # a notebook shows no sign of it otherwise
                self.stderr.write("relaykernel: exit() restarts the kernel: a fresh worker takes over, "
                                  "with no variables.\n")
        return reply, meta

    async def _run_cell(self, code: str, store_history: bool, silent: bool, cell_id: str | None = None,
                        cell_meta: dict[str, Any] | None = None) -> Any:
        """Run a cell; one with top-level await runs as a task of the worker's loop.

        An interrupt cannot raise KeyboardInterrupt in an awaiting cell (it would
        come out of the event loop, not the cell), so it cancels the cell's
        task: the user sees a CancelledError where the cell was waiting, as
        under ipykernel.  A cell that blocks without awaiting is stopped by the
        supervisor after the grace period, like any cell that ignores SIGINT."""
        shell = self.shell
        # Only a cell that says await or async can need the loop; checking that
        # costs nothing, while transforming the cell twice would cost the rest.
        if ("await" in code or "async" in code) and shell.loop_runner is _asyncio_runner:
            try:
                transformed, preprocessing_error = shell.transform_cell(code), None
            except Exception:
                transformed, preprocessing_error = code, sys.exc_info()
            if shell.should_run_async(code, transformed_cell=transformed,
                                      preprocessing_exc_tuple=preprocessing_error):
                return await self._run_awaiting_cell(code, store_history, silent, transformed,
                                                     preprocessing_error, cell_id, cell_meta)
        with self.gate.user_code():  # also a cell run by another %autoawait runner (trio, curio)
            return shell.run_cell(code, store_history=store_history, silent=silent,
                                  **_cell_args(shell.run_cell, cell_id, cell_meta))

    async def _run_awaiting_cell(self, code: str, store_history: bool, silent: bool, transformed: str,
                                 preprocessing_error: Any, cell_id: str | None = None,
                                 cell_meta: dict[str, Any] | None = None) -> Any:
        """What ``run_cell`` does around ``run_cell_async``, awaiting it in the worker's
        loop: post_execute runs matplotlib-inline's figure flush, among others."""
        shell = self.shell
        task = asyncio.ensure_future(shell.run_cell_async(
            code, store_history=store_history, silent=silent, transformed_cell=transformed,
            preprocessing_exc_tuple=preprocessing_error,
            **_cell_args(shell.run_cell_async, cell_id, cell_meta)))
        loop = asyncio.get_running_loop()

        def cancel() -> None:
            loop.call_soon_threadsafe(task.cancel)

        result = None
        tee = getattr(shell, "_tee", None)  # IPython 9 records outputs for %history -o
        with contextlib.ExitStack() as stack:
            if tee is not None:
                stack.enter_context(tee(channel="stdout"))
                stack.enter_context(tee(channel="stderr"))
            try:
                with self.gate.user_code(on_interrupt=cancel):
                    result = await task
            finally:
                shell.events.trigger("post_execute")
                if not silent:
                    shell.events.trigger("post_run_cell", result)
        return result

    # -------------------------------------------------------- introspection
    def complete_request(self, msg: dict[str, Any]) -> tuple[dict[str, Any], wire.DoneMeta]:
        code = msg["content"].get("code", "")
        cursor = msg["content"].get("cursor_pos")
        cursor = len(code) if cursor is None else cursor
        with provisionalcompleter():
            completions = list(rectify_completions(code, self.shell.Completer.completions(code, cursor)))
        types = [{"start": c.start, "end": c.end, "text": c.text, "type": c.type,
                  "signature": c.signature} for c in completions]
        start = completions[0].start if completions else cursor
        end = completions[0].end if completions else cursor
        return {"status": "ok", "matches": [c.text for c in completions], "cursor_start": start,
                "cursor_end": end, "metadata": {"_jupyter_types_experimental": types}}, {"status": "ok"}

    def inspect_request(self, msg: dict[str, Any]) -> tuple[dict[str, Any], wire.DoneMeta]:
        content = msg["content"]
        code = content.get("code", "")
        cursor = content.get("cursor_pos")
        name = token_at_cursor(code, len(code) if cursor is None else cursor)
        reply: dict[str, Any] = {"status": "ok", "found": False, "data": {}, "metadata": {}}
        try:
            data = self.shell.object_inspect_mime(name, detail_level=content.get("detail_level", 0))
            if not self.shell.enable_html_pager:  # frontends would show the HTML page in tooltips
                data.pop("text/html", None)
            reply["data"] = data
            reply["found"] = True
        except KeyError:
            pass
        return reply, {"status": "ok"}

    def history_request(self, msg: dict[str, Any]) -> tuple[dict[str, Any], wire.DoneMeta]:
        c = msg["content"]
        hm = self.shell.history_manager
        raw, output = c.get("raw", True), c.get("output", False)
        kind = c.get("hist_access_type", "tail")
        if kind == "tail":
            history = hm.get_tail(c.get("n", 10), raw=raw, output=output, include_latest=True)
        elif kind == "range":
            history = hm.get_range(c.get("session", 0), c.get("start", 1), c.get("stop"), raw=raw, output=output)
        elif kind == "search":
            history = hm.search(c.get("pattern", "*"), raw=raw, output=output, n=c.get("n"),
                                unique=c.get("unique", False))
        else:
            history = []
        return {"status": "ok", "history": list(history)}, {"status": "ok"}

    def is_complete_request(self, msg: dict[str, Any]) -> tuple[dict[str, Any], wire.DoneMeta]:
        status, indent = self.shell.input_transformer_manager.check_complete(msg["content"].get("code", ""))
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply, {"status": "ok"}

    def _interruptible(self, handler: Callable[[dict[str, Any]], Outcome]) -> Handler:
        """An interrupt stops this handler with an error reply; the worker stays."""
        def handle(msg: dict[str, Any]) -> Outcome:
            with self.gate.user_code():
                return handler(msg)
        return handle

    def _comm_handler(self, method: Callable[[Any, Any, dict[str, Any]], None]) -> Handler:
        def handle(msg: dict[str, Any]) -> tuple[None, wire.DoneMeta]:
            with self.gate.user_code():  # comm callbacks are user code too
                method(None, None, msg)
            return None, {"status": "ok"}
        return handle

    # ---------------------------------------------------------------- stdin
    def raw_input(self, prompt: object = "") -> str:
        """input() for user code: asks the frontend over the stdin channel."""
        return self._input(str(prompt), password=False)

    def getpass(self, prompt: object = "Password: ", stream: Any = None) -> str:
        return self._input(str(prompt), password=True)

    def _input(self, prompt: str, password: bool) -> str:
        if not _allow_stdin.get():
            raise StdinNotImplementedError(
                "input() was called, but this frontend does not support input requests "
                "(allow_stdin is false).")
        self.flush_streams()
        subshell = current_subshell()
        if subshell is not None:  # its reply comes on the side socket
            while not subshell.input_replies.empty():  # replies to an older prompt
                subshell.input_replies.get_nowait()
            self.messenger.input_request(prompt, password, subshell.id)
            reply = subshell.read_input()
        else:
            self.link.discard_kept(wire.INPUT_REPLY)  # replies to an older prompt
            self.messenger.input_request(prompt, password)
            reply = self.link.receive({wire.INPUT_REPLY})
        value = json.loads(wire.as_bytes(reply.payload[wire.VERIFIED.content])).get("value", "")
        return str(value)


def _parse(frames: list[Any]) -> dict[str, Any]:
    """A request the supervisor verified (wire.VERIFIED) as ipykernel's handlers take it."""
    at = wire.VERIFIED
    header = json.loads(wire.as_bytes(frames[at.header]))
    return {
        "header": header,
        "msg_id": header.get("msg_id"),
        "msg_type": header.get("msg_type"),
        "parent_header": json.loads(wire.as_bytes(frames[at.parent])),
        "metadata": json.loads(wire.as_bytes(frames[at.metadata])),
        "content": json.loads(wire.as_bytes(frames[at.content])),
        "buffers": [memoryview(f) for f in frames[at.buffers:]],
    }


def _cell_args(run: Callable[..., Any], cell_id: str | None,
               cell_meta: dict[str, Any] | None) -> dict[str, Any]:
    """``cell_id`` and ``cell_meta`` for IPython's run_cell(_async), those this IPython takes."""
    accepted = _CELL_PARAMS.get(run.__name__)
    if accepted is None:
        try:
            names = set(inspect.signature(run).parameters)
        except (TypeError, ValueError):
            names = set()
        accepted = _CELL_PARAMS[run.__name__] = frozenset({"cell_id", "cell_meta"} & names)
    given = {"cell_id": cell_id, "cell_meta": cell_meta}
    return {name: given[name] for name in accepted}


#: which of cell_id / cell_meta run_cell and run_cell_async accept (older IPythons lack cell_meta)
_CELL_PARAMS: dict[str, frozenset[str]] = {}


def _error_of(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {"ename": "Error", "evalue": "the cell failed", "traceback": []}
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": []}


def install_streams(stdout: OutStream, stderr: OutStream) -> None:
    sys.stdout, sys.stderr = stdout, stderr
