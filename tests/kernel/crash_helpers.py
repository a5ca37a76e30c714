"""Helpers for the crash / restart / resource tests (relaykernel only).

* :func:`install_spec` writes a kernelspec with ``python -m relaykernel install``
  (so it names the relaykernel provisioner) plus extra supervisor options, into
  the test session's ``JUPYTER_PATH``.
* :class:`Recorder` wraps a client so every shell/control/iopub message it
  receives, and every shell request it sends, is remembered: "exactly one
  reply per request" and "every message has the kernel's session" can then be
  checked over a whole test.
* :class:`ProcTracker` remembers every process of a kernel's tree it has seen
  (as ``psutil.Process``, safe against pid reuse), to prove at teardown that
  none outlived the kernel.
* the ``relay`` fixture starts kernels from such specs and, at teardown, asserts
  that the polite shutdown needed no SIGKILL and left no process behind.

Every wait is bounded; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from tests.kernel.helpers import (
    DEFAULT_TIMEOUT,
    Deadline,
    KernelHandle,
    _descendants,
    _kernel_pid,
    collect_iopub_until_idle,
    parent_id,
    start_kernel,
    stop_kernel,
)

_installed: set[str] = set()


def install_spec(name: str, extra_argv: tuple[str, ...] = ()) -> str:
    """Install a relaykernel kernelspec called ``name`` with ``extra_argv``; return the name.

    The spec comes from ``python -m relaykernel install --prefix TMP`` (so it names
    'relaykernel-provisioner'); it is copied, with the extra argv, into the test
    session's ``$JUPYTER_PATH/kernels``.
    """
    if name in _installed:
        return name
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "relaykernel", "install", "--prefix", tmp,
                        "--name", name], check=True, timeout=60, capture_output=True)
        spec = json.loads((Path(tmp) / "share" / "jupyter" / "kernels" / name
                           / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "relaykernel-provisioner"
    spec["argv"] = list(spec["argv"]) + list(extra_argv)
    spec_dir = Path(os.environ["JUPYTER_PATH"]) / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    _installed.add(name)
    return name


# ---------------------------------------------------------------- recording
class Recorder:
    """Remembers what a client sends on shell and receives on every channel."""

    def __init__(self, kc: BlockingKernelClient) -> None:
        self.kc = kc
        self.sent: list[dict[str, Any]] = []
        self.shell: list[dict[str, Any]] = []
        self.control: list[dict[str, Any]] = []
        self.iopub: list[dict[str, Any]] = []
        self._wrap("get_shell_msg", self.shell)
        self._wrap("get_control_msg", self.control)
        self._wrap("get_iopub_msg", self.iopub)
        channel = kc.shell_channel
        send = channel.send

        def recording_send(msg: dict[str, Any]) -> None:
            self.sent.append(msg)
            send(msg)

        channel.send = recording_send  # type: ignore[method-assign]

    def _wrap(self, name: str, log: list[dict[str, Any]]) -> None:
        original = getattr(self.kc, name)

        def recording_get(*args: Any, **kwargs: Any) -> dict[str, Any]:
            msg = original(*args, **kwargs)
            log.append(msg)
            return msg

        setattr(self.kc, name, recording_get)

    def drain(self, quiet: float = 0.5, timeout: float = 5.0) -> None:
        """Read whatever is left on shell and iopub, until both are quiet for ``quiet`` s."""
        deadline = Deadline(timeout)
        while not deadline.expired():
            got = False
            for get in (self.kc.get_shell_msg, self.kc.get_iopub_msg):
                try:
                    get(timeout=min(quiet, max(deadline.remaining(), 0.01)))
                    got = True
                except Empty:
                    pass
            if not got:
                return

    def assert_one_reply_each(self) -> None:
        """Every shell request sent got exactly one reply; no reply is unrequested."""
        self.drain()
        requests = {m["header"]["msg_id"]: m["header"]["msg_type"] for m in self.sent
                    if m["header"]["msg_type"].endswith("_request")}
        replies = Counter(parent_id(m) for m in self.shell)
        counts = {msg_id: replies.get(msg_id, 0) for msg_id in requests}
        wrong = {requests[i] + ":" + i: n for i, n in counts.items() if n != 1}
        assert not wrong, f"requests without exactly one reply (type:msg_id -> replies): {wrong}"
        # kernel_info replies may arrive late for the requests wait_for_ready sent
        # (it repeats them) before this recorder existed
        stray = {parent_id(m) for m in self.shell if parent_id(m) not in requests
                 and m["msg_type"] != "kernel_info_reply"}
        assert not stray, f"shell replies to requests never sent: {stray}"

    def assert_no_restart_seen(self, session: str) -> None:
        """No iopub 'restarting'/'dead' status, and every message has the kernel's session."""
        states = [m["content"].get("execution_state") for m in self.iopub
                  if m["msg_type"] == "status"]
        assert "restarting" not in states and "dead" not in states, states
        sessions = Counter(m["header"]["session"] for m in self.iopub + self.shell + self.control)
        assert set(sessions) == {session}, f"expected only session {session}: {sessions}"


def collect(kc: BlockingKernelClient, msg_id: str, timeout: float = DEFAULT_TIMEOUT,
            on_msg: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Iopub messages with parent ``msg_id`` up to its status idle; ``on_msg`` sees each."""
    return collect_iopub_until_idle(kc, msg_id, timeout, on_msg)


def stderr_text(iopub: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in iopub
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")


# ---------------------------------------------------------------- processes
class ProcTracker:
    """Every process of one kernel's tree seen so far."""

    def __init__(self) -> None:
        self.procs: dict[tuple[int, float], psutil.Process] = {}

    def add(self, pid: int) -> None:
        try:
            proc = psutil.Process(pid)
            self.procs.setdefault((proc.pid, proc.create_time()), proc)
        except psutil.NoSuchProcess:
            pass

    def snapshot(self, handle: KernelHandle) -> None:
        self.add(handle.pid)
        for pid in _descendants(handle.pid):
            self.add(pid)

    def alive(self) -> list[str]:
        out = []
        for proc in self.procs.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{proc.pid} {proc.cmdline()}")
            except psutil.NoSuchProcess:
                pass
        return out


class RelayKernels:
    """Starts kernels for one test and checks, at teardown, that they left nothing behind."""

    def __init__(self) -> None:
        self.handles: list[KernelHandle] = []
        self.tracker = ProcTracker()

    def start(self, kernel_name: str, env: dict[str, str] | None = None) -> KernelHandle:
        try:
            handle = start_kernel(kernel_name, env=env)
        except RuntimeError as e:
            # jupyter_client picks the kernel's ports and closes them before the
            # kernel binds them; rarely another socket takes one meanwhile and the
            # kernel exits with "Address already in use".  Not the kernel's fault:
            # try once more with fresh ports.
            if "died before" not in str(e):
                raise
            handle = start_kernel(kernel_name, env=env)
        self.handles.append(handle)
        self.tracker.snapshot(handle)
        return handle

    def track(self, handle: KernelHandle) -> None:
        """Record the processes of ``handle``'s tree (call whenever a new worker may exist)."""
        self.tracker.snapshot(handle)

    def relaunched(self, handle: KernelHandle) -> None:
        """After the kernel manager launched a new kernel process: follow it."""
        handle.pid = _kernel_pid(handle.km)
        handle.initial_children = _descendants(handle.pid)
        self.tracker.snapshot(handle)

    def stop_all(self) -> list[str]:
        problems = []
        for handle in self.handles:
            self.tracker.snapshot(handle)
            killed = stop_kernel(handle)
            if killed:
                problems.append(f"had to SIGKILL {killed} after shutdown")
        leftovers = self.tracker.alive()
        if leftovers:
            problems.append(f"processes outlived the kernel: {leftovers}")
        return problems


@pytest.fixture
def relay(request: pytest.FixtureRequest) -> Iterator[RelayKernels]:
    """Kernels started with ``relay.start(spec_name)``; torn down with a no-orphans check."""
    kernels = RelayKernels()
    failed_before = request.session.testsfailed
    try:
        yield kernels
    finally:
        problems = kernels.stop_all()
    # only complain about teardown if the test itself passed (do not mask its failure)
    if problems and request.session.testsfailed == failed_before:
        pytest.fail("teardown: " + "; ".join(problems))


def supervisor_pid(handle: KernelHandle) -> int:
    return _kernel_pid(handle.km)
