"""supervisor/debug_relay.py with fake workers: debug_request relayed, the session kept across workers.

The test plays the worker (tests/unit/fake_worker.py): it reads the DEBUG the
supervisor sends on the side socket and answers with a DEBUG_REPLY, or dies.
No process is started.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from relaykernel import wire
from tests.unit.fake_worker import Harness, WorkerEnd
from tests.unit.test_supervisor_rooms import msg_type_of, received, started, statuses


@pytest.fixture
def h():
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()


def debug(h: Harness, command: str, arguments: dict[str, Any] | None = None, seq: int = 1) -> str:
    return h.request("debug_request", {"type": "request", "seq": seq, "command": command,
                                       "arguments": arguments or {}}, channel="control")


def answer(end: WorkerEnd, request: wire.LinkMessage, body: dict[str, Any] | None = None,
           stopped: list[int] | None = None) -> None:
    """The worker's DEBUG_REPLY: a successful DAP response to the relayed request."""
    header = wire.as_bytes(request.payload[wire.VERIFIED.header])
    content = json.loads(wire.as_bytes(request.payload[wire.VERIFIED.content]))
    response = {"type": "response", "seq": 1, "request_seq": content["seq"], "success": True,
                "command": content["command"], **({"body": body} if body is not None else {})}
    end.send(wire.DEBUG_REPLY, {"msg_id": json.loads(header)["msg_id"], "stopped": stopped or [],
                                "attached": True}, end.signer.frames("debug_reply", response, header))


def relayed(h: Harness, end: WorkerEnd, msg_id: str, body: dict[str, Any] | None = None,
            stopped: list[int] | None = None) -> dict[str, Any]:
    """The worker gets the request on its side socket and answers; the frontend's reply."""
    request = received(h, end, wire.DEBUG, side=True)
    answer(end, request, body, stopped)
    return h.reply(msg_id, channel="control")["content"]


def attached_with_a_breakpoint(h: Harness, end: WorkerEnd) -> None:
    relayed(h, end, debug(h, "attach", {"justMyCode": False}))
    relayed(h, end, debug(h, "dumpCell", {"code": "x = 1\ny = 2\n"}), {"sourcePath": "/tmp/cell.py"})
    relayed(h, end, debug(h, "setBreakpoints", {"source": {"path": "/tmp/cell.py"},
                                                "breakpoints": [{"line": 2}]}),
            {"breakpoints": [{"verified": True, "line": 2}]})


def test_a_debug_request_is_relayed_on_the_side_socket_between_busy_and_idle(h):
    end, _ = started(h)
    msg_id = debug(h, "debugInfo")
    assert relayed(h, end, msg_id, {"isStarted": False})["body"] == {"isStarted": False}
    assert statuses(h.iopub_messages(), msg_id) == ["busy", "idle"]


def test_a_death_fails_the_pending_request_ends_the_session_and_replays_it(h):
    end, spare = started(h)
    attached_with_a_breakpoint(h, end)
    relayed(h, end, debug(h, "stackTrace", {"threadId": 3}), {"stackFrames": []}, stopped=[3])
    pending = debug(h, "evaluate", {"expression": "boom()"})
    received(h, end, wire.DEBUG, side=True)
    end.worker.die(-signal.SIGSEGV)

    reply = h.reply(pending, channel="control")["content"]
    assert reply["success"] is False and "died" in reply["message"]
    events = [m["content"] for m in h.iopub_messages() if m["msg_type"] == "debug_event"]
    assert [(e["event"], e["body"]) for e in events] == [
        ("continued", {"threadId": 3, "allThreadsContinued": True}),
        ("thread", {"reason": "exited", "threadId": 3}), ("exited", {"exitCode": 1}), ("terminated", {})]

    received(h, spare, wire.ACTIVATE)
    cell = h.request("execute_request", {"code": "x = 1\ny = 2\n", "silent": False})
    spare.send(wire.ACTIVATED)
    replay = received(h, spare, wire.DEBUG, side=True)
    assert replay.meta["replay"] == {"attach": {"justMyCode": False}, "cells": ["x = 1\ny = 2\n"],
                                     "breakpoints": {"/tmp/cell.py": [{"line": 2}]}}
    assert spare.receive(timeout_ms=50) is None  # the cell waits until the breakpoints are set
    spare.send(wire.DEBUG_REPLY, {"replayed": True})
    assert msg_type_of(received(h, spare)) == "execute_request"
    assert cell


def test_a_debug_request_while_the_worker_starts_waits_for_it(h):
    msg_id = debug(h, "debugInfo")
    assert h.no_reply(channel="control")
    end = h.bring_up(h.workers[0])
    assert relayed(h, end, msg_id, {"isStarted": False})["success"] is True


def test_disconnect_forgets_the_session(h):
    end, spare = started(h)
    attached_with_a_breakpoint(h, end)
    relayed(h, end, debug(h, "disconnect", {"restart": False}))
    end.worker.die(-signal.SIGKILL)
    assert not [m for m in h.iopub_messages() if m["msg_type"] == "debug_event"]
    received(h, spare, wire.ACTIVATE)
    spare.send(wire.ACTIVATED)
    assert spare.receive(timeout_ms=50, side=True) is None  # nothing to replay
