"""The worker's debugger: debugpy in-process, driven over DAP by the frontend's debug_requests.

The supervisor forwards each ``debug_request`` on the side socket (wire.DEBUG),
so it arrives while the main thread runs a cell or is stopped at a breakpoint.
The side thread only queues it: this module's own thread ("relaykernel-debugger")
answers it, one request at a time, and sends the ``debug_reply`` on the link
(wire.DEBUG_REPLY).  DAP requests go to debugpy's adapter over TCP, as a client
(:class:`AdapterClient`, whose reader thread also turns the adapter's events
into ``debug_event`` messages on iopub).

debugpy starts on the first request that needs it (``initialize``, or a replay
after a worker swap): a kernel that never debugs pays nothing.  Our helper
threads are marked so pydevd neither traces nor suspends them: the link's
threads must keep flushing output and reading requests while the user's code
is stopped.  The Jupyter extensions (debugInfo, dumpCell, inspectVariables,
richInspectVariables, copyToGlobals, modules, source) are answered here.

A replay (meta ``replay``) re-creates the frontend's session in a new worker
after the last one died: initialize, attach, the cells dumped and the
breakpoints set; its replies and events are not sent to the frontend.

Imports IPython only through the kernel's shell, and debugpy only when started.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import queue
import re
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import wire
from . import cell_names
from .messages import Parent

if TYPE_CHECKING:
    from .kernel import WorkerKernel

log = logging.getLogger("relaykernel.worker")

Dap = dict[str, Any]

#: seconds a request waits for the adapter's response before it fails
RESPONSE_TIMEOUT = 30.0
#: names of the kernel's variables that the Variables panel does not show (as ipykernel)
_HIDDEN = frozenset({"__name__", "__doc__", "__package__", "__loader__", "__spec__", "__annotations__",
                     "__builtins__", "__builtin__", "__display__", "get_ipython", "debugpy", "exit",
                     "quit", "In", "Out", "_oh", "_dh", "_", "__", "___"})
#: a thread's name: debugpy runs in this process (snapshots are no longer taken)
SNAPSHOT_GUARD = "debugpy"
#: requests that let a stopped thread run again
_RESUMING = frozenset({"continue", "next", "stepIn", "stepOut", "stepBack", "reverseContinue", "goto"})
_HISTORY_NAME = re.compile(r"^_(\d|i)")
#: where the kernel's own code lives: debugpy steps over it (attach's "rules")
_KERNEL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def response(request: Dap, success: bool = True, body: Dap | None = None, message: str | None = None) -> Dap:
    """A DAP response to ``request``."""
    reply: Dap = {"type": "response", "seq": 0, "request_seq": request.get("seq", 0), "success": success,
                  "command": request.get("command", "")}
    if body is not None:
        reply["body"] = body
    if message is not None:
        reply["message"] = message
    return reply


def visible(name: str) -> bool:
    """Whether the Variables panel shows a variable of this name (IPython's history is hidden)."""
    return name not in _HIDDEN and not _HISTORY_NAME.match(name)


def quiet_thread(thread: threading.Thread) -> threading.Thread:
    """Mark a thread so pydevd never traces nor suspends it."""
    thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    return thread


class AdapterClient:
    """One DAP connection to debugpy's adapter: send requests, wait for their responses.

    A reader thread parses the adapter's ``Content-Length`` framed messages:
    responses wake the request that waits for them (matched by our own seq),
    events go to ``on_event``."""

    def __init__(self, address: tuple[str, int], on_event: Callable[[Dap], None]) -> None:
        self._sock = socket.create_connection(address, timeout=10)
        self._sock.settimeout(None)
        self.on_event = on_event
        self._lock = threading.Lock()
        self._seq = 0
        self._waiting: dict[int, queue.Queue[Dap | None]] = {}
        self.closed = False
        quiet_thread(threading.Thread(target=self._read, name="relaykernel-debugger-reader", daemon=True)).start()

    def request(self, command: str, arguments: Dap | None = None, timeout: float = RESPONSE_TIMEOUT) -> Dap:
        """Send a request and return its response (a failed one if the adapter is gone or slow)."""
        answer: queue.Queue[Dap | None] = queue.Queue(1)
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._waiting[seq] = answer
            message = {"type": "request", "seq": seq, "command": command, "arguments": arguments or {}}
            raw = json.dumps(message).encode()
            try:
                self._sock.sendall(b"Content-Length: %d\r\n\r\n" % len(raw) + raw)
            except OSError as e:
                del self._waiting[seq]
                return response(message, False, message=f"the debugger is gone: {e}")
        try:
            got = answer.get(timeout=timeout)
        except queue.Empty:
            got = None
        finally:
            with self._lock:
                self._waiting.pop(seq, None)
        if got is None:
            return response(message, False, message=f"debugpy did not answer {command!r}")
        return got

    def close(self) -> None:
        self.closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            buffer += data
            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                length = _content_length(buffer[:end])
                if len(buffer) < end + 4 + length:
                    break
                body, buffer = buffer[end + 4:end + 4 + length], buffer[end + 4 + length:]
                self._dispatch(json.loads(body))
        self.closed = True
        with self._lock:
            for waiter in self._waiting.values():
                waiter.put(None)

    def _dispatch(self, message: Dap) -> None:
        if message.get("type") == "response":
            with self._lock:
                waiter = self._waiting.get(message.get("request_seq", -1))
            if waiter is not None:
                waiter.put(message)
        elif message.get("type") == "event":
            try:
                self.on_event(message)
            except Exception:
                log.exception("error handling debug event %s", message.get("event"))


def _content_length(header: bytes) -> int:
    for line in header.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError(f"DAP header without Content-Length: {header!r}")


class Debugger:
    """The kernel's side of Jupyter's debugger protocol (see the module docstring)."""

    def __init__(self, kernel: WorkerKernel) -> None:
        self.kernel = kernel
        self._inbox: queue.Queue[wire.LinkMessage] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None  # debugpy's adapter, once listening
        self._client: AdapterClient | None = None
        self._initialized: Dap | None = None  # the adapter's initialize response
        self._attached = False
        self._parent: Parent | None = None  # events answer the latest request
        self._quiet = False  # replaying: events are not for the frontend
        self.breakpoints: dict[str, list[Dap]] = {}
        self.stopped_threads: set[int] = set()
        self._refs: dict[int, Any] = {}  # variablesReference -> object (not stopped: our own references)
        self._removed_transforms: list[Any] = []
        self._hooks: tuple[Callable[..., Any], Callable[..., Any]] | None = None  # (pdb's, debugpy's)
        self._handlers: dict[str, Callable[[Dap], Dap]] = {
            "initialize": self.initialize, "attach": self.attach, "configurationDone": self.configuration_done,
            "disconnect": self.disconnect, "debugInfo": self.debug_info, "dumpCell": self.dump_cell,
            "setBreakpoints": self.set_breakpoints, "inspectVariables": self.inspect_variables,
            "richInspectVariables": self.rich_inspect_variables, "copyToGlobals": self.copy_to_globals,
            "modules": self.modules, "source": self.source, "variables": self.variables,
            "stackTrace": self.stack_trace,
        }

    # ----------------------------------------------------------- threads
    def receive(self, lm: wire.LinkMessage) -> None:
        """The side socket's handler for wire.DEBUG: queue it for the debugger's thread."""
        if self._thread is None or not self._thread.is_alive():  # none yet, or we are a fork of a worker
            self._inbox = queue.Queue()
            self._thread = quiet_thread(threading.Thread(target=self._serve, name="relaykernel-debugger",
                                                         daemon=True))
            self._thread.start()
        self._inbox.put(lm)

    def _serve(self) -> None:
        while True:
            lm = self._inbox.get()
            try:
                if "replay" in lm.meta:
                    try:
                        self.replay(lm.meta["replay"])
                    finally:
                        self.kernel.link.send(wire.DEBUG_REPLY, {"replayed": True})
                else:
                    self._answer(lm)
            except Exception:
                log.exception("error handling a debug request")

    def _answer(self, lm: wire.LinkMessage) -> None:
        header = json.loads(wire.as_bytes(lm.payload[wire.VERIFIED.header]))
        request = json.loads(wire.as_bytes(lm.payload[wire.VERIFIED.content]))
        parent = Parent(header, wire.as_bytes(lm.payload[wire.VERIFIED.header]), "control")
        self._parent = parent
        try:
            reply = self.handle(request)
        except Exception as e:
            log.exception("debug request %r failed", request.get("command"))
            reply = response(request, False, message=f"{type(e).__name__}: {e}")
        meta = {"msg_id": header.get("msg_id", ""), "stopped": sorted(self.stopped_threads),
                "attached": self._attached}
        self.kernel.link.send(wire.DEBUG_REPLY, meta, self.kernel.messenger.frames("debug_reply", reply,
                                                                                   parent=parent))

    def handle(self, request: Dap) -> Dap:
        """The response to one DAP request (a Jupyter extension, or the adapter's answer)."""
        command = str(request.get("command", ""))
        handler = self._handlers.get(command)
        if handler is not None:
            return handler(request)
        if self._client is None:
            return response(request, False, message="the debugger is not started: send initialize first")
        reply = self._forward(request)
        if command in _RESUMING and reply.get("success"):
            # resumed now: its "continued" event may come after the cell's reply
            if command == "continue" and (reply.get("body") or {}).get("allThreadsContinued", True):
                self.stopped_threads.clear()
            else:
                self.stopped_threads.discard(request.get("arguments", {}).get("threadId", 0))
        return reply

    def _forward(self, request: Dap, command: str | None = None, arguments: Dap | None = None) -> Dap:
        """Ask the adapter; its response answers ``request`` (whose seq it takes)."""
        assert self._client is not None
        got = self._client.request(command or request["command"],
                                   request.get("arguments") if arguments is None else arguments)
        return {**got, "request_seq": request.get("seq", 0), "command": request.get("command", "")}

    def _publish(self, event: Dap) -> None:
        """An adapter's event, as a debug_event on iopub (the reader thread calls this)."""
        name = event.get("event")
        body = event.get("body") or {}
        if name == "stopped":
            self.stopped_threads.add(body.get("threadId", 0))
        elif name == "continued":
            if body.get("allThreadsContinued", True):
                self.stopped_threads.clear()
            else:
                self.stopped_threads.discard(body.get("threadId", 0))
        if self._quiet and name != "stopped":
            return
        self.kernel.messenger.publish("debug_event", event, parent=self._parent)

    # -------------------------------------------------------- the session
    def _start_debugpy(self) -> tuple[str, int]:
        """Listen (once per process): debugpy starts its adapter, which we connect to."""
        if self._address is None:
            os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # the frozen-modules warning
            for thread in threading.enumerate():  # ours, not the subshells' (they run user code)
                if _ours(thread.name):
                    quiet_thread(thread)
            pdb_hook = sys.breakpointhook
            import debugpy  # noqa: T100 - the debugger is what this module is for

            debugpy.configure(subProcess=False)  # snapshots and user forks must not attach
            listened: list[Any] = []
            # from a short-lived thread: pydevd traces the thread that starts it
            starter = threading.Thread(target=lambda: listened.append(debugpy.listen(("127.0.0.1", 0))),  # noqa: T100
                                       name="relaykernel-debugpy-start", daemon=True)
            starter.start()
            starter.join(RESPONSE_TIMEOUT)
            if not listened:
                raise RuntimeError("debugpy did not start")
            host, port = listened[0]
            self._address = (str(host), int(port))
            # debugpy takes breakpoint() over; a cell's breakpoint() stops in the frontend's
            # debugger only while a session is attached, and in pdb (over stdin) otherwise:
            # debugpy's hook ignores it when no client is attached
            self._hooks = (pdb_hook, sys.breakpointhook)
            sys.breakpointhook = pdb_hook
            if self.kernel.shell is not None:
                self.kernel.shell.events.register("pre_run_cell", self._before_cell)
            # A fork of this process would inherit pydevd's tracing and breakpoints but not
            # its threads: at a breakpoint it would wait for them forever.  A thread that is
            # not the kernel's own tells snapshot.py not to fork (its threads rule), for as
            # long as the process lives: debugpy cannot be stopped.  (Not quiet_thread:
            # pydevd hides its daemon threads from threading.enumerate.)
            guard = threading.Thread(target=threading.Event().wait, name=SNAPSHOT_GUARD, daemon=True)
            guard.pydev_do_not_trace = True  # type: ignore[attr-defined]
            guard.start()
        return self._address

    def initialize(self, request: Dap) -> Dap:
        if self._client is not None and not self._client.closed and self._initialized is not None:
            return {**self._initialized, "request_seq": request.get("seq", 0)}
        self._client = AdapterClient(self._start_debugpy(), self._publish)
        reply = self._forward(request)
        self._initialized = reply if reply.get("success") else None
        self._keep_leading_blank_lines()
        return reply

    def attach(self, request: Dap) -> Dap:
        """Attach, and go through the adapter's configuration at once: the frontend's own
        configurationDone comes later (after its breakpoints), and is answered here."""
        if self._client is None:
            return response(request, False, message="the debugger is not started: send initialize first")
        if self._attached:
            return response(request)
        assert self._address is not None
        host, port = self._address
        arguments = {**request.get("arguments", {}), "connect": {"host": host, "port": port},
                     "rules": [{"path": _KERNEL_DIR, "include": False}]}
        initialized = threading.Event()
        previous = self._client.on_event

        def watch(event: Dap) -> None:
            if event.get("event") == "initialized":
                initialized.set()
            previous(event)

        self._client.on_event = watch
        client = self._client
        answer: list[Dap] = []
        waiter = threading.Thread(target=lambda: answer.append(client.request("attach", arguments)),
                                  name="relaykernel-debugger-attach", daemon=True)
        quiet_thread(waiter).start()
        try:
            if not initialized.wait(RESPONSE_TIMEOUT):
                return response(request, False, message="debugpy did not initialize")
            client.request("configurationDone")
            waiter.join(RESPONSE_TIMEOUT)
        finally:
            client.on_event = previous
        if not answer:
            return response(request, False, message="debugpy did not answer attach")
        self._attached = bool(answer[0].get("success"))
        if self._attached and self._hooks is not None:
            sys.breakpointhook = self._hooks[1]
        return {**answer[0], "request_seq": request.get("seq", 0), "command": "attach"}

    def configuration_done(self, request: Dap) -> Dap:
        return response(request)

    def disconnect(self, request: Dap) -> Dap:
        reply = self._forward(request) if self._client is not None else response(request)
        if self._client is not None:
            self._client.close()
        self._client, self._initialized, self._attached = None, None, False
        if self._hooks is not None:
            sys.breakpointhook = self._hooks[0]
        self.breakpoints.clear()
        self.stopped_threads.clear()
        self._restore_leading_blank_lines()
        return reply

    def replay(self, session: Dap) -> None:
        """Re-create a frontend's session in this (new) worker: its cells and breakpoints."""
        self._quiet = True
        try:
            self.initialize({"command": "initialize", "seq": 0, "arguments": {
                "clientID": "relaykernel", "adapterID": "python", "pathFormat": "path",
                "linesStartAt1": True, "columnsStartAt1": True}})
            self.attach({"command": "attach", "seq": 0, "arguments": session.get("attach", {})})
            for code in session.get("cells", []):
                self.dump_cell({"command": "dumpCell", "seq": 0, "arguments": {"code": code}})
            for path, breakpoints in session.get("breakpoints", {}).items():
                self.set_breakpoints({"command": "setBreakpoints", "seq": 0, "arguments": {
                    "source": {"path": path}, "breakpoints": breakpoints, "sourceModified": False}})
        finally:
            self._quiet = False

    def _before_cell(self, info: Any) -> None:
        """On the main thread, before each cell: trace it again if it lost pydevd's tracing.

        An interrupt of a cell stopped at a breakpoint is raised inside pydevd's trace
        function: Python then stops tracing the thread (pydevd says "Debugging will be
        disabled for this thread"), and pydevd still believes it suspended.  Without
        this, no breakpoint would stop that worker again."""
        if sys.gettrace() is not None:
            return
        import debugpy  # noqa: T100 - the debugger is what this module is for
        from _pydevd_bundle.pydevd_constants import STATE_RUN  # debugpy's vendored pydevd

        state = getattr(threading.current_thread(), "additional_info", None)
        if state is not None:  # what pydevd's own resume would have reset
            state.pydev_state = STATE_RUN
            state.pydev_step_cmd = -1
            state.pydev_original_step_cmd = -1
            state.pydev_step_stop = None
        debugpy.debug_this_thread()

    def _keep_leading_blank_lines(self) -> None:
        """Cells keep their leading blank lines while debugging: breakpoints are set by line."""
        shell = self.kernel.shell
        if shell is None:
            return
        from IPython.core.inputtransformer2 import leading_empty_lines

        transforms = shell.input_transformer_manager.cleanup_transforms
        if leading_empty_lines in transforms:
            transforms.remove(leading_empty_lines)
            self._removed_transforms.append(leading_empty_lines)

    def _restore_leading_blank_lines(self) -> None:
        shell = self.kernel.shell
        while self._removed_transforms and shell is not None:
            shell.input_transformer_manager.cleanup_transforms.insert(0, self._removed_transforms.pop())

    # ------------------------------------------------- Jupyter extensions
    def debug_info(self, request: Dap) -> Dap:
        return response(request, body={
            # from initialize on, as ipykernel: a frontend that asks between its initialize
            # and its attach (JupyterLab's widgets do) must not conclude the session ended
            "isStarted": self._initialized is not None,
            "hashMethod": cell_names.HASH_METHOD,
            "hashSeed": cell_names.HASH_SEED,
            "tmpFilePrefix": cell_names.prefix(),
            "tmpFileSuffix": cell_names.SUFFIX,
            "breakpoints": [{"source": path, "breakpoints": bps} for path, bps in self.breakpoints.items()],
            "stoppedThreads": sorted(self.stopped_threads),
            "richRendering": True,
            "exceptionPaths": ["Python Exceptions"],
            "copyToGlobals": True,
        })

    def dump_cell(self, request: Dap) -> Dap:
        """Write a cell's code to the file it will be compiled under, for breakpoints in it."""
        code = str(request.get("arguments", {}).get("code", ""))
        path = cell_names.cell_file_name(code)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)
        return response(request, body={"sourcePath": path})

    def set_breakpoints(self, request: Dap) -> Dap:
        if self._client is None:
            return response(request, False, message="the debugger is not started: send initialize first")
        path = str(request.get("arguments", {}).get("source", {}).get("path", ""))
        reply = self._forward(request)
        if reply.get("success"):  # where debugpy put them, which may differ from what was asked
            placed = [{"line": bp["line"]} for bp in reply.get("body", {}).get("breakpoints", []) if "line" in bp]
            if placed:
                self.breakpoints[path] = placed
            else:
                self.breakpoints.pop(path, None)
        return reply

    def stack_trace(self, request: Dap) -> Dap:
        """The adapter's, without the worker process's own bottom frame (its ``-c`` bootstrap,
        ``<string>``: the frames between are the kernel's, which debugpy leaves out)."""
        if self._client is None:
            return response(request, False, message="the debugger is not started: send initialize first")
        reply = self._forward(request)
        body = reply.get("body") or {}
        frames = body.get("stackFrames")
        if not reply.get("success") or not frames:
            return reply
        total = int(body.get("totalFrames", 0) or 0)
        start = int(request.get("arguments", {}).get("startFrame", 0) or 0)
        bottom = not total or start + len(frames) >= total  # this page ends the stack
        if bottom and (frames[-1].get("source") or {}).get("path") == "<string>":
            frames.pop()
            if total:
                body["totalFrames"] = total - 1
        return reply

    def source(self, request: Dap) -> Dap:
        path = str(request.get("arguments", {}).get("source", {}).get("path", ""))
        try:
            with open(path, encoding="utf-8") as f:
                return response(request, body={"content": f.read()})
        except OSError:
            return response(request, False, body={}, message="source unavailable")

    def modules(self, request: Dap) -> Dap:
        arguments = request.get("arguments", {})
        loaded = list(sys.modules.items())
        start = int(arguments.get("startModule", 0))
        count = int(arguments.get("moduleCount", 0)) or len(loaded)
        found = []
        for i, (name, module) in enumerate(loaded[start:start + count], start):
            origin = getattr(getattr(module, "__spec__", None), "origin", None)
            if isinstance(origin, str) and origin.endswith(".py"):
                found.append({"id": i, "name": name, "path": origin})
        return response(request, body={"modules": found, "totalModules": len(loaded)})

    def variables(self, request: Dap) -> Dap:
        """While stopped: the adapter's (the kernel's own names left out); otherwise the
        children of a variable inspectVariables listed."""
        if self.stopped_threads and self._client is not None:
            reply = self._forward(request)
            if reply.get("success"):
                body = reply.setdefault("body", {})
                body["variables"] = [v for v in body.get("variables", []) if visible(str(v.get("name", "")))]
            return reply
        reference = int(request.get("arguments", {}).get("variablesReference", 0))
        if reference not in self._refs:
            return response(request, body={"variables": []})
        return response(request, body={"variables": self._describe_children(self._refs[reference])})

    def inspect_variables(self, request: Dap) -> Dap:
        """The user's variables, from the namespace (the cell need not be stopped)."""
        self._refs.clear()
        namespace = self._namespace()
        return response(request, body={"variables": [self._describe(name, value, name)
                                                     for name, value in list(namespace.items())
                                                     if visible(name)]})

    def rich_inspect_variables(self, request: Dap) -> Dap:
        """A variable's rich representation (the mime bundle its display would show)."""
        arguments = request.get("arguments", {})
        name = str(arguments.get("variableName", ""))
        if not name.isidentifier():
            return response(request, name in ("special variables", "function variables"),
                            body={"data": {}, "metadata": {}})
        data: Dap = {}
        metadata: Dap = {}
        if self.stopped_threads and self._client is not None:
            reply = self._forward(request, "evaluate", {
                "expression": f"get_ipython().display_formatter.format({name})",
                "frameId": arguments.get("frameId"), "context": "clipboard"})
            if not reply.get("success"):
                return reply
            try:
                data, metadata = ast.literal_eval(reply.get("body", {}).get("result", "({}, {})"))
            except (ValueError, SyntaxError):
                return response(request, False, message=f"no rich representation of {name}")
        else:
            shell = self.kernel.shell
            result = shell.user_expressions({name: name})[name] if shell is not None else {}
            if result.get("status") == "ok":
                data, metadata = result.get("data", {}), result.get("metadata", {})
        return response(request, body={"data": data,
                                       "metadata": {k: v for k, v in metadata.items() if k in data}})

    def copy_to_globals(self, request: Dap) -> Dap:
        """Copy a variable of a stopped frame into the user's global namespace."""
        arguments = request.get("arguments", {})
        source, target = str(arguments.get("srcVariableName", "")), str(arguments.get("dstVariableName", ""))
        if not source.isidentifier() or not target.isidentifier():
            return response(request, False,
                            message="dstVariableName and srcVariableName must be valid identifiers")
        if self._client is None:
            return response(request, False, message="the debugger is not started: send initialize first")
        return self._forward(request, "setExpression", {"expression": f"globals()['{target}']", "value": source,
                                                        "frameId": arguments.get("srcFrameId")})

    # ----------------------------------------------------- not stopped
    def _namespace(self) -> dict[str, Any]:
        shell = self.kernel.shell
        return shell.user_ns if shell is not None else {}

    def _describe(self, name: str, value: Any, evaluate_name: str) -> Dap:
        try:
            text = repr(value)
        except Exception as e:  # noqa: BLE001 - a user's __repr__ may raise anything
            text = f"<repr failed: {type(e).__name__}>"
        if len(text) > 1000:
            text = text[:997] + "..."
        reference = 0
        if (isinstance(value, (dict, list, tuple, set, frozenset)) and value) or _has_attributes(value):
            reference = id(value)
            self._refs[reference] = value
        return {"name": name, "value": text, "type": type(value).__name__, "evaluateName": evaluate_name,
                "variablesReference": reference}

    def _describe_children(self, value: Any) -> list[Dap]:
        if isinstance(value, dict):
            items = [(repr(k), v) for k, v in list(value.items())[:300]]
        elif isinstance(value, (list, tuple)):
            items = [(str(i), v) for i, v in enumerate(value[:300])]
        elif isinstance(value, (set, frozenset)):
            items = [(str(i), v) for i, v in enumerate(list(value)[:300])]
        else:
            items = [(k, v) for k, v in list(vars(value).items())[:300] if not k.startswith("__")]
        return [self._describe(name, child, name) for name, child in items]


def _has_attributes(value: Any) -> bool:
    if isinstance(value, type) or callable(value):
        return False
    try:
        return bool(vars(value))
    except TypeError:
        return False


def _ours(name: str) -> bool:
    """A thread of the kernel's own (not a subshell's, which runs user code)."""
    return ((name.startswith("relaykernel-") and not name.startswith("relaykernel-subshell"))
            or name == "IPythonHistorySavingThread")
