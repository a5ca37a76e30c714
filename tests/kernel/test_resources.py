"""Memory soft limit and usage_request (relaykernel only).

The hard memory limit is part of the crash matrix in test_crash.py.
"""

from __future__ import annotations

import time

import pytest

from tests.kernel import crash_helpers
from tests.kernel.crash_helpers import (
    Recorder,
    install_spec,
    supervisor_pid,
)
from tests.kernel.helpers import (
    KERNEL_NAME,
    evaluate,
    execute,
    execute_ok,
    get_reply,
    of_type,
    relaykernel_only,
)

pytestmark = relaykernel_only

#: the fixture that starts kernels and checks, at teardown, that none left a process behind
relay = crash_helpers.relay

#: Grows by 20 MiB every 50 ms, to 2 GiB if nothing stops it.
GROW = ("l = []\n"
        "import time\n"
        "for i in range(100):\n"
        "    l.append(b'x' * (20 * 1024**2))\n"
        "    time.sleep(0.05)\n")


@pytest.fixture(scope="module")
def soft_spec() -> str:
    return install_spec("relaykernel-soft-memory", ("--Supervisor.memory_soft_limit=0.3",
                                                    "--Supervisor.memory_limit=2"))


def _usage(kc) -> dict:
    msg = kc.session.msg("usage_request", {})
    kc.control_channel.send(msg)
    reply = get_reply(kc, msg["header"]["msg_id"], channel="control", timeout=10)
    assert reply["msg_type"] == "usage_reply"
    return reply["content"]


def test_soft_memory_limit_interrupts_the_cell_and_keeps_variables(relay, soft_spec) -> None:
    h = relay.start(soft_spec)
    kc = h.kc
    rec = Recorder(kc)
    execute_ok(kc, "kept = 42")
    worker = h.worker_pid()

    reply, iopub = execute(kc, GROW, timeout=30)
    content = reply["content"]
    assert content["status"] == "error", content
    assert content["ename"] == "MemoryError", content
    assert "soft memory limit" in content["evalue"], content["evalue"]
    assert [e["content"]["ename"] for e in of_type(iopub, "error")] == ["MemoryError"]

    # The worker is still above the soft limit, and the supervisor interrupts every
    # request that is running when it samples (every 0.2 s) -- so even this short
    # cell, which frees the memory as the error message advises, may get a
    # MemoryError itself.  Retry it (bounded); the variables must be there throughout.
    reply = None
    for _ in range(5):
        reply, _ = execute(kc, "n = len(l)\ndel l\nimport gc; gc.collect()")
        if reply["content"].get("ename") != "MemoryError":
            break
    assert reply is not None and reply["content"]["status"] == "ok", reply["content"]
    # interrupted part way: past 0.3 GiB, far from the 100 chunks (2 GiB)
    n = int(evaluate(kc, "n"))
    assert 5 <= n < 100, n
    assert evaluate(kc, "kept") == "42"
    assert h.worker_pid() == worker  # not replaced: the variables are still there
    _, iopub = execute_ok(kc, "kept + 1")
    assert of_type(iopub, "execute_result")[0]["content"]["data"]["text/plain"] == "43"
    assert h.worker_pid() == worker
    rec.assert_one_reply_each()


def test_usage_request_reports_supervisor_and_worker(relay) -> None:
    h = relay.start(KERNEL_NAME)
    kc = h.kc
    worker = h.worker_pid()
    usage = _usage(kc)
    assert usage["kernel_memory"] > 0
    assert usage["pid"] == supervisor_pid(h)
    assert usage["supervisor"]["pid"] == supervisor_pid(h)
    assert usage["worker"]["pid"] == worker
    assert usage["worker"]["memory"] > 0 and usage["supervisor"]["memory"] > 0
    assert usage["kernel_memory"] >= usage["worker"]["memory"]
    assert usage["cpu_count"] >= 1
    assert usage["host_virtual_memory"]["total"] > 0

    # after a crash it reports the new worker
    reply, _ = execute(kc, "import os; os._exit(3)")
    assert reply["content"]["ename"] == "WorkerDied"
    new_worker = h.worker_pid()
    assert new_worker != worker
    usage = _usage(kc)
    assert usage["worker"]["pid"] == new_worker
    assert usage["pid"] == supervisor_pid(h)
    assert usage["kernel_memory"] > 0


@pytest.mark.slow
def test_staying_above_the_soft_limit_never_kills_the_worker(relay, soft_spec) -> None:
    h = relay.start(soft_spec)
    kc = h.kc
    reply, _ = execute(kc, GROW, timeout=30)
    assert reply["content"]["ename"] == "MemoryError", reply["content"]
    worker = h.worker_pid()
    # short cells back to back, still above the limit: each may be interrupted
    # (MemoryError), but the worker, and so the variables, must stay
    deadline = time.monotonic() + 3.0
    cells = 0
    while time.monotonic() < deadline:
        reply, _ = execute(kc, "n = len(l)", timeout=10)
        cells += 1
        assert reply["content"].get("ename") != "WorkerDied", (cells, reply["content"])
    assert h.worker_pid() == worker
