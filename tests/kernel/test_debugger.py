"""The debugger (issue 20): debug_request/debug_reply on control, debug_event on iopub.

A DAP session is driven through jupyter_client as JupyterLab drives it:
initialize, attach, debugInfo, dumpCell, setBreakpoints, configurationDone,
then a cell stops at a breakpoint and is inspected, stepped and continued.  The
same session runs against ipykernel (RELAYKERNEL_TEST_KERNEL=ipykernel); what
happens when the worker dies mid-session is relaykernel's only.

Every wait is bounded; every kernel is stopped by its fixture.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient

from relaykernel.worker.cell_names import source_hash
from tests.kernel.helpers import (
    IS_IPYKERNEL,
    Deadline,
    _get,
    collect_iopub_until_idle,
    evaluate,
    execute_ok,
    get_reply,
    relaykernel_only,
    stream_text,
    wait_for,
)

CELL = "def twice_plus_one(n):\n    total = n * 2\n    return total + 1\n\nresult = twice_plus_one(20)\nprint(result)\n"
#: JupyterLab's initialize arguments
INITIALIZE = {"clientID": "jupyterlab", "clientName": "JupyterLab", "adapterID": "python", "pathFormat": "path",
              "linesStartAt1": True, "columnsStartAt1": True, "supportsVariableType": True,
              "supportsVariablePaging": True, "supportsRunInTerminalRequest": True, "locale": "en-us"}


class Dap:
    """A frontend's debugger session over a kernel client: requests on control, events kept."""

    def __init__(self, kc: BlockingKernelClient) -> None:
        self.kc = kc
        self.seq = 0
        self.events: list[dict[str, Any]] = []

    def request(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0,
                success: bool | None = True) -> dict[str, Any]:
        """Send a debug_request; its debug_reply's content (checked for ``success`` unless None)."""
        self.seq += 1
        msg = self.kc.session.msg("debug_request", {"type": "request", "seq": self.seq, "command": command,
                                                     "arguments": arguments or {}})
        self.kc.control_channel.send(msg)
        reply = get_reply(self.kc, msg["header"]["msg_id"], channel="control", timeout=timeout)
        assert reply["msg_type"] == "debug_reply"
        content = reply["content"]
        if success is not None:
            assert content.get("success", True) is success, str(content)
        return content

    def event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first debug_event ``name`` not consumed yet (iopub is read as needed)."""
        deadline = Deadline(timeout)
        while True:
            for i, event in enumerate(self.events):
                if event["event"] == name:
                    return self.events.pop(i)
            msg = _get(self.kc.get_iopub_msg, deadline)
            if msg is not None and msg["msg_type"] == "debug_event":
                self.events.append(msg["content"])
            elif msg is None and deadline.expired():
                raise AssertionError(f"no {name!r} debug_event within {timeout}s; got {self.events}")

    def start(self) -> dict[str, Any]:
        """initialize, attach, debugInfo (as JupyterLab starts a session): debugInfo's body."""
        self.request("initialize", INITIALIZE)
        self.request("attach", {})
        return self.request("debugInfo")["body"]

    def set_breakpoint(self, code: str, line: int) -> str:
        path = self.request("dumpCell", {"code": code})["body"]["sourcePath"]
        placed = self.request("setBreakpoints", {"source": {"path": path}, "breakpoints": [{"line": line}],
                                                 "sourceModified": False})
        assert [(b["verified"], b["line"]) for b in placed["body"]["breakpoints"]] == [(True, line)]
        self.request("configurationDone")
        return path

    def top_frame(self, thread_id: int) -> dict[str, Any]:
        return self.request("stackTrace", {"threadId": thread_id})["body"]["stackFrames"][0]

    def locals_of(self, frame_id: int) -> dict[str, str]:
        scopes = self.request("scopes", {"frameId": frame_id})["body"]["scopes"]
        reference = next(s["variablesReference"] for s in scopes if s["name"] == "Locals")
        variables = self.request("variables", {"variablesReference": reference})["body"]["variables"]
        return {v["name"]: v["value"] for v in variables}


def test_a_session_stops_at_a_breakpoint_steps_and_continues(kernel):
    kc = kernel.kc
    dap = Dap(kc)
    info = dap.start()
    assert info["hashMethod"] == "Murmur2" and info["tmpFileSuffix"] == ".py"
    assert info["richRendering"] is True and info["copyToGlobals"] is True
    path = dap.set_breakpoint(CELL, 2)
    assert path == f"{info['tmpFilePrefix']}{source_hash(CELL, info['hashSeed'])}.py"
    assert {"source": path, "breakpoints": [{"line": 2}]} in dap.request("debugInfo")["body"]["breakpoints"]

    msg_id = kc.execute(CELL)
    stopped = dap.event("stopped")["body"]
    thread = stopped["threadId"]
    assert stopped["reason"] == "breakpoint"
    frames = dap.request("stackTrace", {"threadId": thread})["body"]["stackFrames"]
    # the cell's two frames; the kernel's own are left out
    assert [(f["name"], f["line"], f["source"]["path"]) for f in frames] == [
        ("twice_plus_one", 2, path), ("<module>", 5, path)]
    frame = frames[0]
    assert dap.locals_of(frame["id"]) == {"n": "20"}
    assert thread in dap.request("debugInfo")["body"]["stoppedThreads"]

    dap.request("next", {"threadId": thread})
    assert dap.event("stopped")["body"]["reason"] == "step"
    frame = dap.top_frame(thread)
    assert frame["line"] == 3
    assert dap.locals_of(frame["id"]) == {"n": "20", "total": "40"}
    rich = dap.request("richInspectVariables", {"variableName": "total", "frameId": frame["id"]})
    assert rich["body"]["data"]["text/plain"] == "40"
    dap.request("copyToGlobals", {"srcVariableName": "total", "dstVariableName": "copied",
                                  "srcFrameId": frame["id"]})
    evaluated = dap.request("evaluate", {"expression": "total * 10", "frameId": frame["id"], "context": "repl"})
    assert evaluated["body"]["result"] == "400"

    dap.request("continue", {"threadId": thread})
    assert dap.event("continued")["body"]["threadId"] == thread
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    assert stream_text(collect_iopub_until_idle(kc, msg_id)).strip() == "41"
    assert evaluate(kc, "copied") == "40"
    # (ipykernel learns its threads were let go a little later: inspect once it has)
    wait_for(lambda: not dap.request("debugInfo")["body"]["stoppedThreads"], 10, what="no stopped thread")

    variables = {v["name"]: v for v in dap.request("inspectVariables")["body"]["variables"]}
    assert variables["result"]["value"] == "41" and variables["copied"]["value"] == "40"
    assert not {"In", "Out", "get_ipython", "_i1"} & set(variables)
    rich = dap.request("richInspectVariables", {"variableName": "result"})
    assert rich["body"]["data"]["text/plain"] == "41"
    assert dap.request("source", {"source": {"path": path}})["body"]["content"] == CELL
    modules = dap.request("modules", {})["body"]["modules"]
    assert any(m["name"] == "IPython.core.interactiveshell" for m in modules)
    dap.request("disconnect", {"restart": False, "terminateDebuggee": False})
    assert not dap.request("debugInfo")["body"]["isStarted"]


def test_the_session_is_started_from_initialize_on(kernel):
    """JupyterLab's widgets ask debugInfo while its session starts; one answered between
    initialize and attach must say started (as ipykernel), or JupyterLab concludes the
    session is off and shows no breakpoint gutter."""
    dap = Dap(kernel.kc)
    assert dap.request("debugInfo")["body"]["isStarted"] is False
    dap.request("initialize", INITIALIZE)
    assert dap.request("debugInfo")["body"]["isStarted"] is True
    dap.request("attach", {})
    dap.request("disconnect", {"restart": False, "terminateDebuggee": False})
    assert dap.request("debugInfo")["body"]["isStarted"] is False


def test_step_in_step_out_pause_and_exception_breakpoints(kernel):
    kc = kernel.kc
    dap = Dap(kc)
    dap.start()
    code = "def inner(v):\n    w = v + 1\n    return w\n\nouter = inner(1)\nafter = outer\n"
    dap.set_breakpoint(code, 5)
    msg_id = kc.execute(code)
    thread = dap.event("stopped")["body"]["threadId"]
    dap.request("stepIn", {"threadId": thread})
    dap.event("stopped")
    frame = dap.top_frame(thread)
    assert (frame["name"], frame["line"]) == ("inner", 2)
    dap.request("stepOut", {"threadId": thread})
    dap.event("stopped")
    assert dap.top_frame(thread)["line"] == 5
    dap.request("continue", {"threadId": thread})
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"

    # pause a running cell, let it go by changing its state from the paused frame
    dap.request("setBreakpoints", {"source": {"path": dap.request("dumpCell", {"code": code})["body"]["sourcePath"]},
                                   "breakpoints": []})
    msg_id = kc.execute("import time\ngo_on = True\nwhile go_on:\n    time.sleep(0.01)\n")
    main = next(t["id"] for t in dap.request("threads")["body"]["threads"] if t["name"] == "MainThread")
    dap.request("pause", {"threadId": main})
    stopped = dap.event("stopped")["body"]
    assert stopped["reason"] == "pause"
    frame = next(f for f in dap.request("stackTrace", {"threadId": main})["body"]["stackFrames"]
                 if f["name"] == "<module>")
    dap.request("evaluate", {"expression": "globals().update(go_on=False)", "frameId": frame["id"],
                             "context": "repl"})
    dap.request("continue", {"threadId": main})
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"

    # stop where an exception is raised, then let it fail the cell
    dap.request("setExceptionBreakpoints", {"filters": ["raised"]})
    msg_id = kc.execute("value = 41\nraise ValueError(value)\n")
    stopped = dap.event("stopped")["body"]
    assert stopped["reason"] == "exception"
    info = dap.request("exceptionInfo", {"threadId": stopped["threadId"]})["body"]
    assert "ValueError" in info["exceptionId"]
    dap.request("setExceptionBreakpoints", {"filters": []})
    dap.request("continue", {"threadId": stopped["threadId"]})
    assert get_reply(kc, msg_id)["content"]["ename"] == "ValueError"
    dap.request("disconnect", {"restart": False, "terminateDebuggee": False})


def test_control_answers_while_stopped_at_a_breakpoint(kernel):
    """kernel_info and comm_info are answered (on shell too, unlike ipykernel), and a cell's
    input() still gets its reply, while the debugger holds a cell at a breakpoint."""
    kc = kernel.kc
    dap = Dap(kc)
    dap.start()
    code = "name = input('who? ')\ngreeting = 'hi ' + name\nprint(greeting)\n"
    dap.set_breakpoint(code, 2)
    msg_id = kc.execute(code, allow_stdin=True)
    assert kc.get_stdin_msg(timeout=30)["content"]["prompt"] == "who? "
    kc.input("ada")  # reaches the worker, which then stops at line 2
    thread = dap.event("stopped")["body"]["threadId"]
    # ipykernel answers shell requests only after the cell: control alone there
    for channel in ("control",) if IS_IPYKERNEL else ("control", "shell"):
        for request in ("kernel_info_request", "comm_info_request"):
            msg = kc.session.msg(request, {})
            getattr(kc, f"{channel}_channel").send(msg)
            started = time.monotonic()
            reply = get_reply(kc, msg["header"]["msg_id"], channel=channel, timeout=10)
            assert reply["content"]["status"] == "ok"
            print(f"{request} on {channel} while stopped: {time.monotonic() - started:.3f} s")
    dap.request("continue", {"threadId": thread})
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    assert stream_text(collect_iopub_until_idle(kc, msg_id)).strip() == "hi ada"
    dap.request("disconnect", {"restart": False, "terminateDebuggee": False})


def test_post_mortem_debug_magic_prompts_over_stdin(kernel):
    """%debug after an exception opens pdb at the failing frame, through input_request."""
    kc = kernel.kc
    execute_ok(kc, "def boom(x):\n    y = x + 1\n    raise ValueError(y)", )
    reply_id = kc.execute("boom(41)")
    assert get_reply(kc, reply_id)["content"]["status"] == "error"
    collect_iopub_until_idle(kc, reply_id)
    msg_id = kc.execute("%debug", allow_stdin=True)
    assert "ipdb>" in kc.get_stdin_msg(timeout=30)["content"]["prompt"]
    kc.input("p y")
    assert "ipdb>" in kc.get_stdin_msg(timeout=30)["content"]["prompt"]
    kc.input("q")
    assert get_reply(kc, msg_id, timeout=30)["content"]["status"] == "ok"
    assert "42" in stream_text(collect_iopub_until_idle(kc, msg_id))


def test_breakpoint_in_a_cell_stops_in_the_attached_debugger(kernel):
    """With a session attached, breakpoint() stops in the frontend's debugger (as ipykernel)."""
    kc = kernel.kc
    dap = Dap(kc)
    dap.start()
    dap.request("configurationDone")
    code = "x = 1\nbreakpoint()\nx = 2\n"
    msg_id = kc.execute(code, allow_stdin=True)
    thread = dap.event("stopped")["body"]["threadId"]
    assert dap.locals_of(dap.top_frame(thread)["id"]).get("x") == "1"
    dap.request("continue", {"threadId": thread})
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    collect_iopub_until_idle(kc, msg_id)
    assert evaluate(kc, "x") == "2"


@relaykernel_only  # ipykernel 7.4: after that interrupt no breakpoint stops its main thread again
def test_an_interrupt_at_a_breakpoint_ends_the_cell_and_the_next_run_stops_again(kernel):
    """The interrupt reaches a cell stopped at a breakpoint (KeyboardInterrupt, same worker,
    the frontend told "continued"); Python then stops tracing the main thread, and the
    worker traces it again, so the breakpoint stops the next run."""
    kc = kernel.kc
    dap = Dap(kc)
    dap.start()
    dap.set_breakpoint(CELL, 3)
    worker = kernel.worker_pid()
    msg_id = kc.execute(CELL)
    thread = dap.event("stopped")["body"]["threadId"]
    kernel.km.interrupt_kernel()
    assert get_reply(kc, msg_id)["content"]["ename"] == "KeyboardInterrupt"
    assert dap.event("continued")["body"]["threadId"] == thread
    assert kernel.worker_pid() == worker
    msg_id = kc.execute(CELL)
    thread = dap.event("stopped")["body"]["threadId"]
    assert dap.top_frame(thread)["line"] == 3
    dap.request("continue", {"threadId": thread})
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    collect_iopub_until_idle(kc, msg_id)


@relaykernel_only  # ipykernel 7.4 leaves breakpoint() to debugpy, which ignores it with no client
def test_breakpoint_after_the_session_ends_prompts_in_pdb_again(kernel):
    """Once the frontend disconnects, breakpoint() is pdb over stdin again, not a no-op."""
    kc = kernel.kc
    dap = Dap(kc)
    dap.start()
    dap.request("disconnect", {"restart": False, "terminateDebuggee": False})
    msg_id = kc.execute("y = 1\nbreakpoint()\ny = 2", allow_stdin=True)
    assert "pdb>" in kc.get_stdin_msg(timeout=30)["content"]["prompt"]
    kc.input("c")
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    collect_iopub_until_idle(kc, msg_id)
    assert evaluate(kc, "y") == "2"


# ------------------------------------------------------- across worker death
@relaykernel_only
def test_worker_killed_at_a_breakpoint_ends_the_session_and_keeps_the_breakpoint(kernel):
    kc = kernel.kc
    dap = Dap(kc)
    dap.start()
    path = dap.set_breakpoint(CELL, 2)
    worker = kernel.worker_pid()
    msg_id = kc.execute(CELL)
    thread = dap.event("stopped")["body"]["threadId"]
    pending = dict(kc.session.msg("debug_request", {"type": "request", "seq": 99, "command": "evaluate",
                                                     "arguments": {"expression": "__import__('os').kill("
                                                                   "__import__('os').getpid(), 9)",
                                                                   "frameId": dap.top_frame(thread)["id"],
                                                                   "context": "repl"}}))
    kc.control_channel.send(pending)  # kills the worker from the stopped frame: never answered by it
    reply = get_reply(kc, pending["header"]["msg_id"], channel="control", timeout=30)
    assert reply["content"]["success"] is False and "died" in reply["content"]["message"]
    assert dap.event("continued")["body"] == {"threadId": thread, "allThreadsContinued": True}
    dap.event("terminated")
    assert get_reply(kc, msg_id)["content"]["ename"] == "WorkerDied"
    collect_iopub_until_idle(kc, msg_id)
    assert kernel.worker_pid() != worker

    # the frontend attaches again: the breakpoint it set before is hit in the new worker
    info = dap.start()
    assert {"source": path, "breakpoints": [{"line": 2}]} in info["breakpoints"]
    msg_id = kc.execute(CELL)
    thread = dap.event("stopped")["body"]["threadId"]
    frame = dap.top_frame(thread)
    assert (frame["line"], frame["source"]["path"]) == (2, path)
    dap.request("continue", {"threadId": thread})
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    collect_iopub_until_idle(kc, msg_id)


@relaykernel_only
def test_breakpoints_come_back_in_a_new_worker_without_a_new_attach(kernel):
    """JupyterLab does not attach again after a crash (the kernel did not restart): the
    supervisor re-creates the session in the new worker, so the breakpoint still stops."""
    kc = kernel.kc
    dap = Dap(kc)
    dap.start()
    dap.set_breakpoint(CELL, 3)
    os.kill(kernel.worker_pid(), signal.SIGKILL)
    dap.event("terminated")
    msg_id = kc.execute(CELL)
    thread = dap.event("stopped")["body"]["threadId"]
    frame = dap.top_frame(thread)
    assert frame["line"] == 3 and dap.locals_of(frame["id"]) == {"n": "20", "total": "40"}
    dap.request("continue", {"threadId": thread})
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    collect_iopub_until_idle(kc, msg_id)


@relaykernel_only
def test_a_debug_request_while_a_new_worker_starts_waits_for_it(kernel):
    """A frontend asks debugInfo as soon as it connects: while the worker starts, the
    request waits for it instead of failing (one that reached the dying worker fails)."""
    kc = kernel.kc
    dap = Dap(kc)
    os.kill(kernel.worker_pid(), signal.SIGKILL)
    content = dap.request("debugInfo", success=None)
    if not content["success"]:
        assert "died" in content["message"], content
        content = dap.request("debugInfo", success=None)
    assert content["success"] and content["body"]["isStarted"] is False, content


@relaykernel_only
def test_no_snapshot_of_a_worker_running_debugpy(kernel):
    """A fork of a worker running debugpy would inherit its tracing and breakpoints without
    its threads (at a breakpoint it would wait for them forever): such a worker keeps no
    snapshot, so after a crash a fresh worker starts debugpy afresh and stops there."""
    kc = kernel.kc
    dap = Dap(kc)
    dap.start()
    execute_ok(kc, "during = 'after debugpy started'")
    wait_for(lambda: "none is kept: threads the user started are running (debugpy)"
             in stream_text(execute_ok(kc, "%snapshot")[1]), 10, what="no snapshot kept")
    dap.set_breakpoint(CELL, 3)
    os.kill(kernel.worker_pid(), signal.SIGKILL)
    dap.event("terminated")
    msg_id = kc.execute(CELL)
    thread = dap.event("stopped")["body"]["threadId"]
    assert dap.top_frame(thread)["line"] == 3
    dap.request("continue", {"threadId": thread})
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    collect_iopub_until_idle(kc, msg_id)
    assert evaluate(kc, "'during' in dir()") == "False"


@relaykernel_only
def test_a_restart_keeps_the_session_and_its_breakpoints(kernel):
    """A restart swaps the worker as a crash does: the session is set up again in the
    new (empty) worker, so the breakpoints stop the next run."""
    kc = kernel.kc
    dap = Dap(kc)
    dap.start()
    dap.set_breakpoint(CELL, 3)
    worker = kernel.worker_pid()
    os.kill(kernel.pid, signal.SIGHUP)  # the supervisor restarts its worker in place (as for the provisioner)
    dap.event("terminated")
    msg_id = kc.execute(CELL)
    thread = dap.event("stopped")["body"]["threadId"]
    assert dap.top_frame(thread)["line"] == 3
    dap.request("continue", {"threadId": thread})
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    collect_iopub_until_idle(kc, msg_id)
    assert kernel.worker_pid() != worker
