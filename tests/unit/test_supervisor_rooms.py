"""The supervisor's routing, queue and recovery rules, with fake workers (fake_worker.py).

Each test plays the worker's side of the link by hand, so the order of events
is the test's: a death while the worker runs 0, 1 or 2 requests, the re-ask of
a repeatable request whose reply was lost, the requeue of requests it never
began, the start-failure backoff, a dead spare, and control requests served
while the worker is busy.  No process is started; each test takes milliseconds.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from relaykernel import wire
from relaykernel.supervisor.worker_process import WorkerState
from tests.unit.fake_worker import Harness, WorkerEnd


@pytest.fixture
def h():
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()


def started(h: Harness) -> tuple[WorkerEnd, WorkerEnd]:
    """Worker 1 active, worker 2 a ready spare."""
    active = h.bring_up(h.workers[0])
    h.until(lambda: len(h.workers) == 2, "a spare to start")
    spare = h.bring_up(h.workers[1])
    assert h.loop.pool.active is h.workers[0] and h.workers[1].state is WorkerState.READY
    return active, spare


def received(h: Harness, end: WorkerEnd, kind: bytes = wire.REQUEST, side: bool = False) -> wire.LinkMessage:
    lm = h.until(lambda: end.receive(side=side), f"{kind!r} at worker {end.worker.number}")
    assert lm.kind == kind, lm.kind
    return lm


def msg_type_of(lm: wire.LinkMessage) -> str:
    import json

    return str(json.loads(wire.as_bytes(lm.payload[wire.VERIFIED.header]))["msg_type"])


def statuses(messages: list[dict[str, Any]], msg_id: str) -> list[str]:
    return [m["content"]["execution_state"] for m in messages
            if m["msg_type"] == "status" and m["parent_header"].get("msg_id") == msg_id]


def test_a_request_runs_in_the_worker_between_busy_and_idle(h):
    end, _ = started(h)
    msg_id = h.request("execute_request", {"code": "1", "silent": False})
    request = received(h, end)
    end.worker.begun = 1
    end.done(request, {"status": "ok", "execution_count": 1}, execution_count=2)
    reply = h.reply(msg_id)
    assert reply["content"] == {"status": "ok", "execution_count": 1}
    assert statuses(h.iopub_messages(), msg_id) == ["busy", "idle"]
    assert h.loop.flow.execution_count == 2


def test_an_error_aborts_the_executes_queued_behind_it(h):
    end, _ = started(h)
    failing = h.request("execute_request", {"code": "1/0", "silent": False})
    cell = received(h, end)
    end.worker.begun = 1
    queued = h.request("execute_request", {"code": "2", "silent": False})
    h.no_reply()
    end.done(cell, {"status": "error", "ename": "ZeroDivisionError", "evalue": "", "traceback": [],
                    "execution_count": 1}, execution_count=2)
    assert h.reply(failing)["content"]["status"] == "error"
    assert h.reply(queued)["content"]["status"] == "aborted"


def test_a_death_while_idle_is_reported_and_the_spare_takes_over(h):
    first, spare = started(h)
    first.worker.die(-signal.SIGSEGV)
    activate = received(h, spare, wire.ACTIVATE)
    assert activate.meta["execution_count"] == 1
    report = [m for m in h.iopub_messages() if m["msg_type"] == "stream"]
    assert report and report[0]["content"]["name"] == "stderr" and report[0]["parent_header"] == {}
    assert "SIGSEGV" in report[0]["content"]["text"]
    spare.send(wire.ACTIVATED)
    msg_id = h.request("complete_request", {"code": "pri", "cursor_pos": 3})
    assert msg_type_of(received(h, spare)) == "complete_request"
    assert h.no_reply()  # nobody answered for the new worker: it is running it
    assert msg_id


def test_the_running_execute_gets_worker_died_and_the_queued_ones_are_aborted(h):
    end, spare = started(h)
    running = h.request("execute_request", {"code": "crash()", "silent": False})
    received(h, end)
    end.worker.begun = 1
    queued = h.request("execute_request", {"code": "2", "silent": False})
    assert h.no_reply()  # queued behind the running execute, not sent
    end.worker.die(-signal.SIGSEGV)
    reply = h.reply(running)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "WorkerDied"
    assert reply["content"]["execution_count"] == 1
    assert h.reply(queued)["content"]["status"] == "aborted"  # stop_on_error
    messages = h.iopub_messages()
    errors = [m for m in messages if m["msg_type"] == "error" and m["parent_header"]["msg_id"] == running]
    assert len(errors) == 1
    assert statuses(messages, running) == ["busy", "idle"]
    assert h.loop.flow.execution_count == 2  # the crashed cell used its number
    received(h, spare, wire.ACTIVATE)


def test_a_repeatable_request_whose_reply_died_is_asked_again(h):
    """Two requests begun, no DONE: the older finished but its DONE was lost. A completion
    changes nothing, so the next worker is asked again; the newer one killed the worker."""
    end, spare = started(h)
    older = h.request("complete_request", {"code": "a", "cursor_pos": 1})
    newer = h.request("inspect_request", {"code": "b", "cursor_pos": 1})
    received(h, end)
    received(h, end)
    end.worker.begun = 2
    end.worker.die(-signal.SIGKILL)
    assert h.reply(newer)["content"]["ename"] == "WorkerDied"
    received(h, spare, wire.ACTIVATE)
    spare.send(wire.ACTIVATED)
    again = received(h, spare)
    assert msg_type_of(again) == "complete_request"
    spare.worker.begun = 1
    spare.done(again, {"status": "ok", "matches": ["abc"], "cursor_start": 0, "cursor_end": 1,
                       "metadata": {}})
    reply = h.reply(older)
    assert reply["content"]["matches"] == ["abc"]


def test_requests_the_worker_never_began_go_to_the_next_worker(h):
    end, spare = started(h)
    first = h.request("complete_request", {"code": "a", "cursor_pos": 1})
    second = h.request("complete_request", {"code": "b", "cursor_pos": 1})
    received(h, end)
    received(h, end)  # pipelined: both sent
    end.worker.begun = 1  # it died running the first
    end.worker.die(-signal.SIGKILL)
    assert h.reply(first)["content"]["ename"] == "WorkerDied"
    received(h, spare, wire.ACTIVATE)
    spare.send(wire.ACTIVATED)
    requeued = received(h, spare)
    assert msg_type_of(requeued) == "complete_request"
    spare.worker.begun = 1
    spare.done(requeued, {"status": "ok", "matches": [], "cursor_start": 0, "cursor_end": 1, "metadata": {}})
    assert h.reply(second)["content"]["status"] == "ok"


def test_workers_that_keep_dying_before_ready_fail_the_queue_and_back_off(h):
    msg_id = h.request("execute_request", {"code": "1", "silent": False})
    for n in range(3):
        h.until(lambda n=n: len(h.workers) == n + 1, f"worker {n + 1} to start")
        h.workers[n].die(1)
    reply = h.reply(msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "WorkerStartFailed"
    assert h.no_reply(steps=10)
    assert len(h.workers) == 3  # no fourth start until the back-off timer


def test_a_dead_spare_is_never_activated(h):
    """Both workers die at once (a killed fork server takes its forks): the spare,
    dead but still listed as ready, must not be sent ACTIVATE (a real send to it
    could block the loop); a new worker is started instead."""
    first, spare = started(h)
    spare.worker.die(-signal.SIGKILL)
    first.worker.die(-signal.SIGKILL)
    h.until(lambda: len(h.workers) >= 3, "a new worker")
    for _ in range(5):
        h.step()
    lm = spare.receive()
    assert lm is None or lm.kind != wire.ACTIVATE
    h.bring_up(h.workers[2])
    assert h.loop.pool.active is h.workers[2]


def test_a_worker_that_cannot_take_a_message_is_killed_not_waited_for(h):
    first, spare = started(h)
    spare.sock.close(linger=0)  # nobody at the other end of its link any more
    first.worker.die(-signal.SIGKILL)
    h.until(lambda: spare.worker.exitcode is not None, "the unreachable spare to be killed")
    h.until(lambda: len(h.workers) >= 3, "a new worker")


def test_control_is_served_while_the_worker_runs_a_cell(h):
    end, _ = started(h)
    running = h.request("execute_request", {"code": "while True: pass", "silent": False})
    received(h, end)
    end.worker.begun = 1
    info = h.request("kernel_info_request", channel="control")
    assert h.reply(info, "control")["content"]["implementation"] == "relaykernel"
    interrupt = h.request("interrupt_request", channel="control")
    assert h.reply(interrupt, "control")["content"]["status"] == "ok"
    assert signal.SIGINT in end.worker.signals
    assert h.no_reply("shell")  # the cell still runs
    assert running


def test_a_control_request_for_the_worker_runs_next_and_is_marked_control(h):
    """complete_request on control skips the shell requests waiting; the worker is told it
    came on control (for get_parent('control'))."""
    end, _ = started(h)
    h.request("execute_request", {"code": "1", "silent": False})
    cell = received(h, end)
    end.worker.begun = 1
    h.request("execute_request", {"code": "2", "silent": False})
    control = h.request("complete_request", {"code": "a", "cursor_pos": 1}, channel="control")
    h.no_reply()
    end.done(cell, {"status": "ok", "execution_count": 1}, execution_count=2)
    nxt = received(h, end)
    assert msg_type_of(nxt) == "complete_request"
    assert nxt.meta == {"channel": "control"}
    assert control


def test_an_undecodable_link_message_is_told_to_the_user(h):
    end, _ = started(h)
    end.sock.send(b"\x00garbage")
    streams = [m for m in h.iopub_messages() if m["msg_type"] == "stream"]
    assert any("could not be read" in m["content"]["text"] for m in streams)




# ------------------------------------------------------------------ subshells
def create_subshell(h: Harness, end: WorkerEnd) -> str:
    """A new subshell; the worker is told the list (SUBSHELLS, on the side socket)."""
    msg_id = h.request("create_subshell_request", channel="control")
    subshell_id = str(h.reply(msg_id, channel="control")["content"]["subshell_id"])
    listed = received(h, end, wire.SUBSHELLS, side=True)
    assert subshell_id in listed.meta["ids"]
    return subshell_id


@pytest.fixture
def h0():
    """Subshells overlap at once (Supervisor.subshell_overlap_after = 0)."""
    harness = Harness(overlap_after=0)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def h_short():
    """Subshells overlap after 0.3 s."""
    harness = Harness(overlap_after=0.3)
    try:
        yield harness
    finally:
        harness.close()


def nothing_on_side(h: Harness, end: WorkerEnd, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        h.step()
        if end.side.poll(0):
            return False
    return True


def test_a_subshell_request_waits_until_the_main_cell_has_run_overlap_after(h_short):
    h = h_short
    end, _ = started(h)
    sub = create_subshell(h, end)
    h.request("execute_request", {"code": "long", "silent": False})
    received(h, end)
    began = time.monotonic()
    h.request("execute_request", {"code": "beside", "silent": False}, subshell_id=sub)
    assert nothing_on_side(h, end, 0.15)  # the main cell is young: the subshell waits
    lm = received(h, end, side=True)
    assert time.monotonic() - began >= 0.29
    assert lm.meta == {"subshell_id": sub}


def test_a_subshell_request_starts_when_a_short_main_request_ends(h):
    end, _ = started(h)
    sub = create_subshell(h, end)
    h.request("execute_request", {"code": "short", "silent": False})
    main = received(h, end)
    side_id = h.request("comm_msg", {"comm_id": "c", "data": {}}, subshell_id=sub)
    assert nothing_on_side(h, end, 0.1)
    end.done(main, {"status": "ok", "execution_count": 1})
    lm = h.until(lambda: end.receive(side=True), "the subshell's comm_msg")
    assert lm.meta == {"subshell_id": sub}
    end.done(lm, None, subshell_id=sub)
    h.until(lambda: "idle" in statuses(h.iopub_messages(), side_id), "the comm_msg's idle")


def test_dones_are_matched_to_their_lane_and_the_kernel_stays_busy(h0):
    h = h0
    end, _ = started(h)
    sub = create_subshell(h, end)
    main_id = h.request("execute_request", {"code": "main", "silent": False})
    main = received(h, end)
    side_id = h.request("execute_request", {"code": "side", "silent": False}, subshell_id=sub)
    side = received(h, end, side=True)
    end.done(side, {"status": "ok", "execution_count": 2}, subshell_id=sub)
    assert h.reply(side_id)["content"]["status"] == "ok"
    seen = h.iopub_messages()
    assert statuses(seen, side_id) == ["busy", "idle"]
    assert statuses(seen, main_id)[-1:] == ["busy"]  # said again after the subshell's idle
    end.done(main, {"status": "ok", "execution_count": 3})
    assert h.reply(main_id)["content"]["status"] == "ok"


def test_a_death_answers_every_lane_and_keeps_the_subshells(h0):
    h = h0
    end, spare = started(h)
    sub = create_subshell(h, end)
    main_id = h.request("execute_request", {"code": "main", "silent": False})
    received(h, end)
    running_id = h.request("complete_request", {"code": "a", "cursor_pos": 1}, subshell_id=sub)
    received(h, end, side=True)
    # (behind an execute it would be aborted: stop_on_error holds in each lane)
    queued_id = h.request("execute_request", {"code": "b", "silent": False}, subshell_id=sub)
    h.workers[0].begun = 1
    h.workers[0].die(-signal.SIGSEGV)
    assert h.reply(main_id)["content"]["ename"] == "WorkerDied"
    assert h.reply(running_id)["content"]["ename"] == "WorkerDied"
    # the spare takes over: it learns which subshells exist, and runs their queued requests
    h.until(lambda: h.loop.pool.active is h.workers[1], "the spare to take over")
    assert received(h, spare, wire.ACTIVATE).kind == wire.ACTIVATE
    spare.send(wire.ACTIVATED)
    listed = received(h, spare, wire.SUBSHELLS, side=True)
    assert listed.meta == {"ids": [sub]}
    lm = received(h, spare, side=True)
    assert b'"b"' in wire.as_bytes(lm.payload[wire.VERIFIED.content])
    spare.done(lm, {"status": "ok", "execution_count": 2}, subshell_id=sub)
    assert h.reply(queued_id)["content"]["status"] == "ok"


def test_a_request_for_an_unknown_subshell_is_answered_with_an_error(h):
    started(h)
    msg_id = h.request("execute_request", {"code": "1", "silent": False}, subshell_id="nope")
    reply = h.reply(msg_id)["content"]
    assert reply["status"] == "error" and "nope" in reply["evalue"]


def test_comm_messages_during_a_cell_run_beside_it(h):
    end, _ = started(h)
    h.request("execute_request", {"code": "await answer", "silent": False})
    received(h, end)
    h.request("comm_msg", {"comm_id": "c", "data": {}})
    lm = received(h, end, side=True)
    assert lm.meta == {"subshell_id": wire.BESIDE_CELL}
