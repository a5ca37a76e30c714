"""An interrupt that arrives after the kernel reports ready but before its first
worker is: it applies to the cell waiting (which ends with KeyboardInterrupt
without running, and the executes queued behind it are aborted, as after any
interrupted cell), or changes nothing when no cell waits; never lost, never a
replaced worker.

relaykernel only: ipykernel answers kernel_info once its shell is ready, so it
has no such window.  The first worker is held before READY by a startup file of
the profile that waits for a file the test creates.
"""

from __future__ import annotations

from pathlib import Path

from tests.kernel.helpers import (
    KERNEL_NAME,
    KERNEL_NAME_MSG_INTERRUPT,
    collect_iopub_until_idle,
    evaluate,
    execute_ok,
    get_reply,
    of_type,
    relaykernel_only,
    start_kernel,
    stop_kernel,
)

pytestmark = relaykernel_only


def _slow_profile(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An IPYTHONDIR whose startup file holds every worker until ``release`` exists (30 s at most)."""
    ipython_dir, release = tmp_path / "ipython", tmp_path / "release"
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-wait.py").write_text(
        f"import os, time\n_end = time.monotonic() + 30\n"
        f"while not os.path.exists({str(release)!r}) and time.monotonic() < _end:\n"
        f"    time.sleep(0.01)\n")
    return {"IPYTHONDIR": str(ipython_dir)}, release


def _interrupt_request(kc) -> dict:
    request = kc.session.msg("interrupt_request", {})
    kc.control_channel.send(request)
    return get_reply(kc, request["header"]["msg_id"], channel="control", timeout=15)


def _received(kc) -> None:
    """Wait until the kernel has read what this client sent on shell: it reads shell
    in order, and answers kernel_info at once, even with cells waiting."""
    get_reply(kc, kc.kernel_info(), timeout=15)


def _assert_interrupted_without_running(kc, msg_id: str) -> None:
    reply = get_reply(kc, msg_id, timeout=15)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    errors = of_type(collect_iopub_until_idle(kc, msg_id, timeout=15), "error")
    assert [e["content"]["ename"] for e in errors] == ["KeyboardInterrupt"]


def test_interrupt_request_before_the_worker_is_ready(tmp_path):
    env, release = _slow_profile(tmp_path)
    handle = start_kernel(KERNEL_NAME_MSG_INTERRUPT, env=env)
    try:
        kc = handle.kc
        # nothing waits yet: answered, and nothing later is interrupted by it
        assert _interrupt_request(kc)["content"]["status"] == "ok"
        first = kc.execute("ran = True")
        queued = kc.execute("queued = True")
        _received(kc)
        assert _interrupt_request(kc)["content"]["status"] == "ok"
        _assert_interrupted_without_running(kc, first)
        assert get_reply(kc, queued, timeout=15)["content"]["status"] == "aborted"
        release.touch()
        execute_ok(kc, "after = 1")
        assert evaluate(kc, "('ran' in dir(), 'queued' in dir(), after)") == "(False, False, 1)"
    finally:
        release.touch()
        stop_kernel(handle)


def test_sigint_before_the_worker_is_ready(tmp_path):
    """The frontend's Interrupt button (interrupt_mode signal: SIGINT to the kernel)
    right after the cell was sent, at once after the kernel reported ready."""
    env, release = _slow_profile(tmp_path)
    handle = start_kernel(KERNEL_NAME, env=env)
    try:
        kc = handle.kc
        first = kc.execute("ran = True")
        _received(kc)
        handle.km.interrupt_kernel()
        _assert_interrupted_without_running(kc, first)
        release.touch()
        execute_ok(kc, "after = 1")
        assert evaluate(kc, "('ran' in dir(), after)") == "(False, 1)"
    finally:
        release.touch()
        stop_kernel(handle)
