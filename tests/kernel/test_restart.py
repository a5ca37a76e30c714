"""Restarts that keep the supervisor: new namespace, same kernel, comms and widgets kept.

relaykernel only.  The kernelspec is written by ``python -m relaykernel install``,
so it names the 'relaykernel-provisioner' (which tells the supervisor that a
restart swaps the worker).  The ``relay`` fixture asserts at teardown that the
kernel shut down without any process having to be SIGKILLed and left none behind.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.kernel import crash_helpers
from tests.kernel.comm_helpers import (
    ECHO_TARGET,
    comm_info,
    comm_msg,
    comm_open,
    comms_of,
    handled,
    new_comm_id,
)
from tests.kernel.crash_helpers import (
    Recorder,
    install_spec,
    supervisor_pid,
)
from tests.kernel.helpers import (
    evaluate,
    execute,
    execute_ok,
    get_reply,
    of_type,
    pid_exists,
    relaykernel_only,
    wait_for,
)

pytestmark = relaykernel_only

#: the fixture that starts kernels and checks, at teardown, that none left a process behind
relay = crash_helpers.relay

#: Restarting in place must be quick: a warm standby worker takes over.
RESTART_BUDGET = 1.0

SLIDER_VALUES = ("[x.value for x in __import__('ipywidgets').Widget.widgets.values() "
                 "if isinstance(x, __import__('ipywidgets').IntSlider)]")


@pytest.fixture(scope="module")
def spec() -> str:
    return install_spec("relaykernel-provisioned")


def _prepare(kc) -> dict[str, Any]:
    """A variable, a slider moved by the frontend to 5, and a frontend comm on 'echo'."""
    pytest.importorskip("ipywidgets", minversion="8")
    _, iopub = execute_ok(kc, ECHO_TARGET + "\nimport ipywidgets\nx = 1\n"
                              "s = ipywidgets.IntSlider(value=3)\n")
    slider = next(m["content"]["comm_id"] for m in comms_of(iopub, "comm_open")
              if m["content"]["data"]["state"].get("_model_name") == "IntSliderModel")
    handled(kc, comm_msg(kc, slider, {"method": "update", "state": {"value": 5},
                                      "buffer_paths": []}))
    echo = new_comm_id()
    handled(kc, comm_open(kc, echo, "echo"))
    assert evaluate(kc, "x") == "1"
    return {"slider": slider, "echo": echo, "comms": comm_info(kc)}


def _check_swapped(h, before: dict[str, Any], sup: int, old_worker: int) -> None:
    """Same supervisor, new worker with a fresh namespace, comms and widget state kept."""
    kc = h.kc
    assert supervisor_pid(h) == sup and pid_exists(sup)
    assert h.km.is_alive()
    reply, _ = execute(kc, "x")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "NameError", reply["content"]
    assert h.worker_pid() != old_worker
    wait_for(lambda: not pid_exists(old_worker), 10, what="the old worker to be gone")
    after = comm_info(kc)
    assert set(before["comms"]) <= set(after), (before["comms"], after)
    assert evaluate(kc, SLIDER_VALUES) == "[5]"
    # the echo comm comes back as soon as its target does
    execute_ok(kc, ECHO_TARGET)
    iopub = handled(kc, comm_msg(kc, before["echo"], {"hello": "again"}))
    assert [m["content"]["data"] for m in comms_of(iopub, "comm_msg", before["echo"])] == [
        {"hello": "again"}]


def test_shutdown_request_with_restart_swaps_the_worker(relay, spec) -> None:
    h = relay.start(spec)
    kc = h.kc
    rec = Recorder(kc)
    before = _prepare(kc)
    sup, old_worker = supervisor_pid(h), h.worker_pid()
    relay.track(h)

    started = time.monotonic()
    msg_id = kc.shutdown(restart=True)
    reply = get_reply(kc, msg_id, channel="control", timeout=10)
    assert reply["content"] == {"status": "ok", "restart": True}
    first = kc.execute("1+1")
    first_reply = get_reply(kc, first, timeout=10)
    elapsed = time.monotonic() - started
    print(f"in-place restart (shutdown_request restart=True -> first reply): {elapsed:.3f}s")
    assert first_reply["content"]["status"] == "ok", first_reply["content"]
    # a restart the user asked for numbers cells from 1 again, like ipykernel
    assert first_reply["content"]["execution_count"] == 1, first_reply["content"]
    assert elapsed < RESTART_BUDGET, elapsed

    _check_swapped(h, before, sup, old_worker)
    relay.track(h)
    rec.assert_one_reply_each()


#: jupyter_client (8.10) implements restart_kernel(now=True) as provisioner.kill()
#: *without* restart=True, then launches again; a provisioner cannot tell it from
#: kill_kernel(), so a forced restart relaunches the supervisor and loses its comms.
#: This test documents that limitation and will flag the day it changes.
FORCED_RESTART_BUG = pytest.mark.xfail(
    strict=True, reason="known limitation, documented in relaykernel/provisioner.py: "
    "jupyter_client kills the kernel for restart_kernel(now=True) without telling the "
    "provisioner it is a restart, so the supervisor is relaunched (comms lost)")


@pytest.mark.parametrize("now", [False, pytest.param(True, marks=FORCED_RESTART_BUG)],
                         ids=["graceful", "now"])
def test_kernel_manager_restart_keeps_the_supervisor(relay, spec, now: bool) -> None:
    """KernelManager.restart_kernel(): shutdown_request (graceful) or SIGHUP (now=True)."""
    h = relay.start(spec)
    kc = h.kc
    before = _prepare(kc)
    sup, old_worker = supervisor_pid(h), h.worker_pid()
    relay.track(h)

    started = time.monotonic()
    h.km.restart_kernel(now=now)
    kc.wait_for_ready(timeout=10)
    elapsed = time.monotonic() - started
    print(f"KernelManager.restart_kernel(now={now}) until ready: {elapsed:.3f}s")
    assert elapsed < RESTART_BUDGET, elapsed

    _check_swapped(h, before, sup, old_worker)
    relay.track(h)


def test_restart_of_a_dead_supervisor_launches_a_new_one(relay, spec) -> None:
    h = relay.start(spec)
    old_sup, old_worker = supervisor_pid(h), h.worker_pid()
    relay.track(h)
    os.kill(old_sup, signal.SIGKILL)
    wait_for(lambda: not h.km.is_alive(), 10, what="the supervisor to be dead")
    wait_for(lambda: not pid_exists(old_worker), 10, what="its worker to follow it")

    h.km.restart_kernel(now=True)
    relay.relaunched(h)
    new_sup = supervisor_pid(h)
    assert new_sup != old_sup and pid_exists(new_sup)
    old_kc = h.kc
    h.kc = h.km.client()
    old_kc.stop_channels()
    h.kc.start_channels()
    h.kc.wait_for_ready(timeout=30)
    _, iopub = execute_ok(h.kc, "1+1")
    assert of_type(iopub, "execute_result")[0]["content"]["data"]["text/plain"] == "2"
    assert comm_info(h.kc) == {}  # a new kernel: nothing was kept
    relay.track(h)


def test_first_cell_after_restart_kernel_runs(relay, spec) -> None:
    """jupyter_client interrupts the kernel before asking for the restart: that interrupt
    must not land in the fresh worker's first cell (it once did, as a KeyboardInterrupt)."""
    h = relay.start(spec)
    kc = h.kc
    sup = supervisor_pid(h)
    for _ in range(3):
        h.km.restart_kernel()
        kc.wait_for_ready(timeout=30)
        reply, _ = execute(kc, "1 + 1")
        assert reply["content"]["status"] == "ok", reply["content"]
    assert supervisor_pid(h) == sup
    relay.track(h)


def test_a_forced_shutdown_takes_the_programs_cells_started(relay, spec) -> None:
    """shutdown_kernel(now=True) SIGKILLs the supervisor's group; each worker leads its
    own, so the provisioner kills those too, as a kill of ipykernel takes its children."""
    h = relay.start(spec)
    child = int(evaluate(h.kc, "__import__('subprocess').Popen(['sleep', '300']).pid"))
    assert pid_exists(child)
    relay.track(h)
    h.km.shutdown_kernel(now=True)
    try:
        wait_for(lambda: not pid_exists(child), 10, what="the cell's sleep to be killed")
    finally:
        if pid_exists(child):
            os.kill(child, signal.SIGKILL)


def test_exit_in_a_cell_restarts_the_worker(relay, spec) -> None:
    """ipykernel's process ends on exit() and the frontend restarts it; relaykernel swaps
    the worker at once.  exit(keep_kernel=True) keeps everything, as under ipykernel."""
    h = relay.start(spec)
    kc = h.kc
    execute_ok(kc, "kept = 1")
    reply, _ = execute_ok(kc, "exit(keep_kernel=True)")
    assert {"source": "ask_exit", "keepkernel": True} in reply["content"]["payload"]
    assert evaluate(kc, "kept") == "1"
    worker = h.worker_pid()

    reply, iopub = execute_ok(kc, "exit()")
    assert {"source": "ask_exit", "keepkernel": False} in reply["content"]["payload"]
    assert "a fresh worker takes over" in "".join(
        m["content"]["text"] for m in of_type(iopub, "stream") if m["content"]["name"] == "stderr")
    wait_for(lambda: not pid_exists(worker), 10, what="the old worker to end")
    reply, _ = execute(kc, "kept")
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "NameError"
    assert h.worker_pid() != worker
    relay.track(h)
