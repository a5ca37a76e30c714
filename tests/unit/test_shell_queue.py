"""The shell queue: arrival order, pipelining rules, stop_on_error aborts, crash requeue."""

import json

import zmq

from relaykernel.supervisor.shell_queue import ShellQueue, stops_on_error
from relaykernel.supervisor.sockets import Incoming


def request(msg_type, **content):
    frames = [zmq.Frame(json.dumps({"msg_type": msg_type}).encode()), zmq.Frame(b"{}"),
              zmq.Frame(b"{}"), zmq.Frame(json.dumps(content).encode())]
    return Incoming("shell", [b"id"], {"msg_type": msg_type, "msg_id": msg_type}, frames, content=content)


def test_comm_messages_are_pipelined_in_arrival_order():
    q = ShellQueue(window=3)
    msgs = [request("comm_msg") for _ in range(5)]
    for m in msgs:
        q.push(m)
    sent = [q.next(), q.next(), q.next(), q.next()]
    assert sent == msgs[:3] + [None]  # the window is full
    assert q.current is msgs[0]
    assert q.finish() is msgs[0]
    assert q.next() is msgs[3]


def test_nothing_is_sent_behind_an_execute_request():
    q = ShellQueue()
    e, c = request("execute_request", code="1"), request("comm_msg")
    q.push(e)
    q.push(c)
    assert q.next() is e
    assert q.next() is None
    q.finish()
    assert q.next() is c


def test_an_execute_request_waits_for_pipelined_requests():
    q = ShellQueue()
    c, e = request("comm_msg"), request("execute_request", code="1")
    q.push(c)
    q.push(e)
    assert q.next() is c
    assert q.next() is None
    q.finish()
    assert q.next() is e


def test_take_executes_leaves_other_requests_queued():
    q = ShellQueue()
    a, b, c = request("execute_request"), request("complete_request"), request("execute_request")
    for m in (a, b, c):
        q.push(m)
    assert q.take_executes() == [a, c]
    assert list(q) == [b]


def test_requeue_after_a_crash_keeps_order():
    q = ShellQueue()
    msgs = [request("comm_msg") for _ in range(3)]
    for m in msgs:
        q.push(m)
    q.next(), q.next()
    assert q.finish() is msgs[0]  # the one the worker died in
    q.requeue_sent()
    assert list(q) == msgs[1:]


def test_stop_on_error_defaults():
    assert stops_on_error(request("execute_request", code="x"))
    assert not stops_on_error(request("execute_request", code="x", stop_on_error=False))
    assert not stops_on_error(request("execute_request", code="x", silent=True))


def test_control_requests_go_ahead_of_shell_requests_in_their_own_order():
    q = ShellQueue()
    running, s1, s2 = request("execute_request", code="1"), request("complete_request"), request("inspect_request")
    c1, c2 = request("is_complete_request"), request("history_request")
    c1.channel = c2.channel = "control"
    q.push(running)
    assert q.next() is running
    q.push(s1)
    q.push_next(c1)
    q.push(s2)
    q.push_next(c2)
    assert list(q) == [c1, c2, s1, s2]
