"""Kernel lifecycle: info, heartbeat, interrupts, shutdown, message security, processes."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import uuid

import psutil
import pytest
import zmq
from jupyter_client.session import Session

from tests.kernel.helpers import (
    IS_IPYKERNEL,
    KERNEL_NAME_MSG_INTERRUPT,
    TEST_KERNEL,
    Deadline,
    collect_iopub_until_idle,
    evaluate,
    execute,
    execute_ok,
    get_reply,
    parent_id,
    pid_exists,
    relaykernel_only,
    start_kernel,
    stop_kernel,
    wait_for,
)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def test_kernel_info_reply(kernel):
    kc = kernel.kc
    reply = get_reply(kc, kc.kernel_info())
    c = reply["content"]
    assert c["status"] == "ok"
    assert _version_tuple(c["protocol_version"]) >= (5, 3)
    li = c["language_info"]
    assert li["name"] == "python"
    assert li["version"].split(".")[:2] == [str(sys.version_info[0]), str(sys.version_info[1])]
    assert li["file_extension"] == ".py"
    assert li["mimetype"] == "text/x-python"
    assert isinstance(c["banner"], str) and c["banner"].strip()
    assert isinstance(c["help_links"], list) and c["help_links"]
    for link in c["help_links"]:
        assert link["text"] and link["url"].startswith("http")
    assert c["implementation"] == ("ipython" if IS_IPYKERNEL else "relaykernel")
    assert c["implementation_version"]
    if _version_tuple(c["protocol_version"]) >= (5, 4):  # 5.4 lists the optional features
        assert isinstance(c["supported_features"], list)
        if "debugger" not in c["supported_features"]:
            assert not c.get("debugger", False)
    # the reply is also available on control
    msg = kc.session.msg("kernel_info_request", {})
    kc.control_channel.send(msg)
    creply = get_reply(kc, msg["header"]["msg_id"], channel="control")
    assert creply["msg_type"] == "kernel_info_reply"
    assert creply["content"]["language_info"]["name"] == "python"


def _hb_ping(km, timeout: float = 5.0) -> bool:
    """Send one heartbeat ping on a fresh REQ socket; True if echoed within timeout."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(f"{km.transport}://{km.ip}:{km.hb_port}")
        payload = uuid.uuid4().hex.encode()
        sock.send(payload)
        if sock.poll(int(timeout * 1000)):
            return sock.recv() == payload
        return False
    finally:
        sock.close()


def test_heartbeat(kernel):
    kc, km = kernel.kc, kernel.km
    assert _hb_ping(km)
    assert kc.is_alive()
    # the heartbeat keeps answering while user code is busy
    msg_id = kc.execute("import time\ntime.sleep(3)", allow_stdin=False)
    wait_for(lambda: any(m["msg_type"] == "execute_input" for m in _drain_iopub(kc, msg_id)),
             timeout=30, what="execute_input")
    t0 = time.monotonic()
    assert _hb_ping(km, timeout=2.0)
    assert time.monotonic() - t0 < 2.0
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"


def _drain_iopub(kc, msg_id):
    out = []
    while kc.iopub_channel.msg_ready():
        msg = kc.get_iopub_msg(timeout=1)
        if parent_id(msg) == msg_id:
            out.append(msg)
    return out


def _start_sleeping_cell(kc, seconds: int = 30) -> str:
    """Start a long sleep and return its msg_id once the cell is known to be running."""
    msg_id = kc.execute(f"import time\nprint('sleeping', flush=True)\ntime.sleep({seconds})",
                        allow_stdin=False)
    deadline = Deadline(30)
    while not deadline.expired():
        for msg in _drain_iopub(kc, msg_id):
            if msg["msg_type"] == "stream" and "sleeping" in msg["content"]["text"]:
                return msg_id
        time.sleep(0.02)
    raise AssertionError("cell did not start")


def _assert_interrupted(kc, msg_id, t_interrupt):
    reply = get_reply(kc, msg_id, timeout=10)
    assert time.monotonic() - t_interrupt < 10
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    iopub = collect_iopub_until_idle(kc, msg_id)
    errors = [m for m in iopub if m["msg_type"] == "error"]
    assert errors and errors[0]["content"]["ename"] == "KeyboardInterrupt"
    # the user's line, and no frame of the kernel's own signal handling
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(errors[0]["content"]["traceback"]))
    assert "time.sleep(" in traceback
    assert "relaykernel" not in traceback and "ipykernel" not in traceback, traceback


def test_interrupt_via_kernel_manager(kernel):
    kc = kernel.kc
    execute_ok(kc, "state = 'kept'")
    worker_before = kernel.worker_pid()
    msg_id = _start_sleeping_cell(kc)
    t0 = time.monotonic()
    kernel.km.interrupt_kernel()
    _assert_interrupted(kc, msg_id, t0)
    # the kernel still works, with its state: it was interrupted, not restarted
    assert evaluate(kc, "state") == "'kept'"
    assert kernel.worker_pid() == worker_before
    assert pid_exists(kernel.pid)


def test_interrupt_via_sigint_to_process_group(kernel):
    kc = kernel.kc
    pgid = os.getpgid(kernel.pid)
    # safety: never signal our own process group
    assert pgid != os.getpgid(0), "kernel shares the test runner's process group"
    execute_ok(kc, "state = 'kept'")
    worker_before = kernel.worker_pid()
    msg_id = _start_sleeping_cell(kc)
    t0 = time.monotonic()
    os.killpg(pgid, signal.SIGINT)
    _assert_interrupted(kc, msg_id, t0)
    assert pid_exists(kernel.pid)
    assert evaluate(kc, "state") == "'kept'"
    assert kernel.worker_pid() == worker_before
    # idle kernel: a stray SIGINT between cells does no harm either
    os.killpg(pgid, signal.SIGINT)
    reply, _ = execute(kc, "1 + 1")
    # (a SIGINT that lands while this cell starts may interrupt it; retry once)
    if reply["content"]["status"] != "ok":
        reply, _ = execute(kc, "1 + 1")
    assert reply["content"]["status"] == "ok"
    assert pid_exists(kernel.pid)


def test_interrupt_right_after_kernel_info_does_no_harm():
    """kernel_info is answered while the supervisor is still starting; an
    interrupt sent then (a frontend's Interrupt button, SIGINT to the group)
    must not kill it, and requests sent meanwhile are all answered."""
    handle = start_kernel()
    try:
        kc = handle.kc
        pgid = os.getpgid(handle.pid)
        assert pgid != os.getpgid(0), "kernel shares the test runner's process group"
        handle.km.interrupt_kernel()  # SIGINT, at once after the first kernel_info_reply
        for _ in range(60):  # and through the rest of the start (~0.3 s on 2 cores)
            os.killpg(pgid, signal.SIGINT)
            time.sleep(0.01)
        assert evaluate(kc, "21 * 2") == "42"
        assert pid_exists(handle.pid)
    finally:
        stop_kernel(handle)


def test_interrupt_request_message_mode():
    handle = start_kernel(KERNEL_NAME_MSG_INTERRUPT)
    try:
        assert handle.km.kernel_spec.interrupt_mode == "message"
        kc = handle.kc
        execute_ok(kc, "state = 'kept'")
        msg_id = _start_sleeping_cell(kc)
        t0 = time.monotonic()
        req = kc.session.msg("interrupt_request", {})
        kc.control_channel.send(req)
        creply = get_reply(kc, req["header"]["msg_id"], channel="control", timeout=10)
        assert creply["msg_type"] == "interrupt_reply"
        assert creply["content"]["status"] == "ok"
        _assert_interrupted(kc, msg_id, t0)
        assert evaluate(kc, "state") == "'kept'"
        assert pid_exists(handle.pid)
    finally:
        stop_kernel(handle)


@pytest.mark.parametrize("channel", ["control", "shell"])  # shell: before protocol 5.1, still accepted
def test_shutdown_request_exits_process(kernel, channel):
    kc = kernel.kc
    execute_ok(kc, "1")
    procs = [kernel.process()]
    for pid in kernel.initial_children + [c.pid for c in kernel.process().children(True)]:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    if channel == "control":
        msg_id = kc.shutdown(restart=False)
    else:
        msg = kc.session.msg("shutdown_request", {"restart": False})
        kc.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
    reply = get_reply(kc, msg_id, channel=channel, timeout=10)
    assert reply["msg_type"] == "shutdown_reply"
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["restart"] is False
    t0 = time.monotonic()
    _gone, alive = psutil.wait_procs(procs, timeout=5)
    assert not alive, f"still alive {time.monotonic() - t0:.1f}s after shutdown_reply: {alive}"


def test_debug_request_gets_a_reply(kernel):
    """kernel_info tells whether there is a debugger; a client that asks anyway is answered."""
    kc = kernel.kc
    msg = kc.session.msg("debug_request", {"seq": 1, "type": "request", "command": "initialize",
                                            "arguments": {"adapterID": "test"}})
    kc.control_channel.send(msg)
    reply = get_reply(kc, msg["header"]["msg_id"], channel="control", timeout=10)
    assert reply["msg_type"] == "debug_reply"
    assert reply["content"]["success"] is True  # both have a debugger (relaykernel: worker/debugger.py)
    assert reply["content"]["command"] == "initialize"
    assert evaluate(kc, "1+1") == "2"


def _raw_shell_socket(km):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"{km.transport}://{km.ip}:{km.shell_port}")
    return sock


def _execute_content(code: str) -> dict:
    return {"code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True}


def _recv_reply(session: Session, sock, msg_id: str, timeout: float = 30) -> dict:
    deadline = Deadline(timeout)
    while not deadline.expired():
        if sock.poll(int(min(1.0, deadline.remaining()) * 1000)):
            _, msg = session.recv(sock, mode=0)
            if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
                return msg
    raise AssertionError(f"no reply to {msg_id}")


def test_badly_signed_requests_are_ignored(kernel, tmp_path):
    km, kc = kernel.km, kernel.kc
    good = Session(key=km.session.key, signature_scheme=km.session.signature_scheme,
                   username="tester")
    wrong_key = Session(key=b"not-the-key-" + uuid.uuid4().hex.encode(),
                        signature_scheme=km.session.signature_scheme, username="tester")
    marker_wrong = tmp_path / "wrong_key"
    marker_tamper = tmp_path / "tampered"
    marker_unsigned = tmp_path / "unsigned"
    marker_good = tmp_path / "good"
    sock = _raw_shell_socket(km)
    try:
        # 1. signed with the wrong key
        wrong_key.send(sock, "execute_request",
                       _execute_content(f"open({str(marker_wrong)!r}, 'w').close()"))
        # 2. correctly signed, then the content frame replaced after signing
        msg = good.msg("execute_request", _execute_content("pass"))
        frames = good.serialize(msg)  # [DELIM, HMAC, header, parent, metadata, content]
        frames[5] = good.pack(_execute_content(f"open({str(marker_tamper)!r}, 'w').close()"))
        sock.send_multipart(frames)
        # 3. no signature at all
        msg = good.msg("execute_request",
                       _execute_content(f"open({str(marker_unsigned)!r}, 'w').close()"))
        frames = good.serialize(msg)
        frames[1] = b""
        sock.send_multipart(frames)
        # 4. a correct request on the same connection, after the bad ones
        good_msg = good.msg("execute_request",
                            _execute_content(f"open({str(marker_good)!r}, 'w').close()"))
        good.send(sock, good_msg)
        reply = _recv_reply(good, sock, good_msg["header"]["msg_id"])
        assert reply["content"]["status"] == "ok"
    finally:
        sock.close()
    assert marker_good.exists()
    assert not marker_wrong.exists()
    assert not marker_tamper.exists()
    assert not marker_unsigned.exists()
    # and the normal client still works
    execute_ok(kc, "1")
    assert pid_exists(kernel.pid)


def test_garbage_frames_do_not_kill_kernel(kernel):
    km, kc = kernel.km, kernel.kc
    garbage = [
        [b"garbage"],
        [b""],
        [b"<IDS|MSG>"],
        [b"<IDS|MSG>", b"not-a-signature", b"{", b"}", b"{}", b"{}"],
        [b"<IDS|MSG>", b"", b"\xff\xfe", b"\x00", b"[]", b"null"],
        [os.urandom(64) for _ in range(7)],
        [b"id", b"<IDS|MSG>"] + [b"{}"] * 20,
    ]
    for port in (km.shell_port, km.control_port):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(f"{km.transport}://{km.ip}:{port}")
        try:
            for frames in garbage:
                sock.send_multipart(frames)
            # a well-formed request on the same connection still gets its reply
            session = Session(key=km.session.key, signature_scheme=km.session.signature_scheme)
            msg = session.msg("kernel_info_request", {})
            session.send(sock, msg)
            reply = _recv_reply(session, sock, msg["header"]["msg_id"])
            assert reply["msg_type"] == "kernel_info_reply"
        finally:
            sock.close()
    assert pid_exists(kernel.pid)
    reply, iopub = execute_ok(kc, "40 + 2")
    assert next(m for m in iopub if m["msg_type"] == "execute_result")["content"]["data"][
        "text/plain"] == "42"
    assert _hb_ping(km)


@relaykernel_only
def test_user_code_runs_in_worker_not_supervisor(kernel):
    supervisor = kernel.process()
    worker_pid = kernel.worker_pid()
    assert worker_pid != kernel.pid
    # the worker is a descendant of the supervisor
    assert worker_pid in [p.pid for p in supervisor.children(recursive=True)]
    # the supervisor is the process launched from the kernelspec argv
    cmdline = supervisor.cmdline()
    assert cmdline[1:4] == ["-m", "relaykernel", "-f"], cmdline
    assert cmdline[4] == kernel.km.connection_file
    # (whether the supervisor imports IPython cannot be checked reliably from the
    # outside; that is covered by a unit test)


def _io_thread_policies(pid: int) -> list[int]:
    policies = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().startswith("ZMQbg/IO/"):
                policies.append(os.sched_getscheduler(int(tid)))
    return policies


@relaykernel_only
@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_libzmq_io_threads_of_supervisor_and_worker_run_as_batch(kernel):
    """They must not preempt the thread that wakes them (relaykernel/io_threads.py)."""
    for pid in (kernel.pid, kernel.worker_pid()):
        policies = _io_thread_policies(pid)
        assert policies and set(policies) == {os.SCHED_BATCH}, (pid, policies)
    # user code is not touched: the cell's own thread keeps the default policy
    assert evaluate(kernel.kc, "__import__('os').sched_getscheduler(0)") == str(os.SCHED_OTHER)


@relaykernel_only
def test_no_orphan_worker_after_supervisor_sigkill(kernel):
    worker_pid = kernel.worker_pid()
    supervisor = kernel.process()
    descendants = supervisor.children(recursive=True)
    assert worker_pid in [p.pid for p in descendants]
    supervisor.kill()
    supervisor.wait(timeout=5)
    _gone, alive = psutil.wait_procs(descendants, timeout=10)
    assert not alive, f"orphaned after supervisor SIGKILL: {[(p.pid, p.cmdline()) for p in alive]}"
    assert not pid_exists(worker_pid)


def test_kernel_under_test_is_selected_one(kernel):
    """Guard: the running kernel really is the implementation RELAYKERNEL_TEST_KERNEL names."""
    cmdline = kernel.process().cmdline()
    module = "ipykernel_launcher" if IS_IPYKERNEL else "relaykernel"
    assert module in cmdline, (TEST_KERNEL, cmdline)


@relaykernel_only
def test_interrupts_racing_requests_never_lose_a_reply(kernel):
    """SIGINTs landing anywhere (idle, parsing, replying, in the cell) cost at most the
    cell they hit: every request still gets its one reply and the worker survives."""
    kc = kernel.kc
    pgid = os.getpgid(kernel.pid)
    assert pgid != os.getpgid(0)
    worker = kernel.worker_pid()
    statuses = []
    for i in range(40):
        msg_id = kc.execute(f"{i} + 1")
        if i % 2:
            os.killpg(pgid, signal.SIGINT)
        reply = get_reply(kc, msg_id, timeout=30)
        statuses.append(reply["content"]["status"])
        assert reply["content"]["status"] == "ok" or reply["content"]["ename"] == "KeyboardInterrupt"
    assert kernel.worker_pid() == worker
    assert evaluate(kc, "2 + 2") == "4"
    assert statuses.count("ok") >= 20  # the even ones were never signalled


@relaykernel_only
def test_connection_file_with_an_empty_key_is_honoured():
    """A frontend that writes key "" sends unsigned messages (jupyter_client's
    default for write_connection_file); the kernel must answer them, as ipykernel
    does, not replace the key with one nobody knows."""
    handle = start_kernel(session=Session(key=b""))
    try:
        assert handle.km.session.key == b""
        assert evaluate(handle.kc, "6 * 7") == "42"
    finally:
        stop_kernel(handle)
