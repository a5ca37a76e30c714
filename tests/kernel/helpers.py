"""Helpers for talking to a real kernel over the Jupyter messaging protocol.

Every wait is bounded by a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from queue import Empty
from typing import Any

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

KERNEL_NAME = "relaykernel"
KERNEL_NAME_MSG_INTERRUPT = "relaykernel-msg"

TEST_KERNEL = (os.environ.get("RELAYKERNEL_TEST_KERNEL", "relaykernel").strip().lower()
               or "relaykernel")
IS_IPYKERNEL = TEST_KERNEL == "ipykernel"

#: Skip marker for tests that only make sense for relaykernel's supervisor/worker design.
relaykernel_only = pytest.mark.skipif(
    IS_IPYKERNEL,
    reason="relaykernel-specific (supervisor/worker processes); "
    "RELAYKERNEL_TEST_KERNEL=ipykernel",
)

DEFAULT_TIMEOUT = 30.0


class Deadline:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = Deadline(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if deadline.expired():
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def parent_id(msg: dict[str, Any]) -> str | None:
    return (msg.get("parent_header") or {}).get("msg_id")


def _get(channel_get: Callable[..., dict], deadline: Deadline) -> dict[str, Any] | None:
    remaining = deadline.remaining()
    if remaining <= 0:
        return None
    try:
        return channel_get(timeout=min(remaining, 1.0))
    except Empty:
        return None


def get_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = DEFAULT_TIMEOUT,
              channel: str = "shell") -> dict[str, Any]:
    """Return the reply to ``msg_id`` on ``channel`` ('shell' or 'control').

    Replies to other requests are discarded.
    """
    getter = kc.get_shell_msg if channel == "shell" else kc.get_control_msg
    deadline = Deadline(timeout)
    while not deadline.expired():
        msg = _get(getter, deadline)
        if msg is not None and parent_id(msg) == msg_id:
            return msg
    raise AssertionError(f"no {channel} reply to {msg_id} within {timeout}s")


def collect_iopub_until_idle(kc: BlockingKernelClient, msg_id: str,
                             timeout: float = DEFAULT_TIMEOUT,
                             on_msg: Callable[[dict[str, Any]], None] | None = None,
                             ) -> list[dict[str, Any]]:
    """All iopub messages whose parent is ``msg_id``, up to and including status idle.

    Messages with other parents are dropped; ``on_msg`` sees each kept one as it arrives.
    """
    deadline = Deadline(timeout)
    msgs: list[dict[str, Any]] = []
    while not deadline.expired():
        msg = _get(kc.get_iopub_msg, deadline)
        if msg is None or parent_id(msg) != msg_id:
            continue
        msgs.append(msg)
        if on_msg is not None:
            on_msg(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return msgs
    types = [m["msg_type"] for m in msgs]
    raise AssertionError(f"no idle status for {msg_id} within {timeout}s; got {types}")


def execute(kc: BlockingKernelClient, code: str, timeout: float = DEFAULT_TIMEOUT,
            **opts: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Execute ``code``; return (execute_reply, iopub messages for it until idle).

    The iopub list includes the busy/idle status messages and execute_input.
    ``opts`` are passed to ``kc.execute`` (silent, store_history, user_expressions,
    allow_stdin, stop_on_error).
    """
    opts.setdefault("allow_stdin", False)
    deadline = Deadline(timeout)
    msg_id = kc.execute(code, **opts)
    reply = get_reply(kc, msg_id, timeout=deadline.remaining())
    iopub = collect_iopub_until_idle(kc, msg_id, timeout=max(deadline.remaining(), 5.0))
    return reply, iopub


def outputs(iopub: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The iopub messages that are outputs (no status / execute_input)."""
    return [m for m in iopub if m["msg_type"] not in ("status", "execute_input")]


def stream_text(iopub: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(m["content"]["text"] for m in iopub
                   if m["msg_type"] == "stream" and m["content"]["name"] == name)


def of_type(iopub: list[dict[str, Any]], msg_type: str) -> list[dict[str, Any]]:
    return [m for m in iopub if m["msg_type"] == msg_type]


def execute_ok(kc: BlockingKernelClient, code: str, timeout: float = DEFAULT_TIMEOUT,
               **opts: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Like :func:`execute` but assert the reply status is 'ok'."""
    reply, iopub = execute(kc, code, timeout=timeout, **opts)
    content = reply["content"]
    assert content["status"] == "ok", (
        f"execution failed: {content.get('ename')}: {content.get('evalue')}\n"
        + "\n".join(content.get("traceback", []))
    )
    return reply, iopub


def evaluate(kc: BlockingKernelClient, expr: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Evaluate ``expr`` via user_expressions (silently) and return its text/plain repr."""
    reply, _ = execute(kc, "", timeout=timeout, silent=True,
                       user_expressions={"value": expr})
    result = reply["content"]["user_expressions"]["value"]
    assert result["status"] == "ok", result
    return result["data"]["text/plain"]


def pid_exists(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class KernelHandle:
    """What the ``kernel`` fixture yields."""

    km: KernelManager
    kc: BlockingKernelClient
    pid: int
    initial_children: list[int] = field(default_factory=list)

    def process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def worker_pid(self) -> int:
        """The pid of the process that runs user code (``os.getpid()`` in a cell)."""
        return int(evaluate(self.kc, "__import__('os').getpid()"))


def kernel_env() -> dict[str, str]:
    """The environment for kernels under test: ours, minus pytest's per-test variables.

    (ipykernel, for one, disables fd-level output capture when it sees
    PYTEST_CURRENT_TEST, which would make fd-capture tests meaningless.)
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def start_kernel(kernel_name: str = KERNEL_NAME, ready_timeout: float = 60.0,
                 env: dict[str, str] | None = None, **manager_options: Any) -> KernelHandle:
    """Start a kernel through jupyter_client; ``env`` adds to the kernel's environment,
    ``manager_options`` go to the KernelManager (e.g. ``transport="ipc"``)."""
    km = KernelManager(kernel_name=kernel_name, **manager_options)
    km.shutdown_wait_time = 5.0
    km.start_kernel(env={**kernel_env(), **(env or {})})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=ready_timeout)
    except Exception:
        handle = KernelHandle(km=km, kc=kc, pid=_kernel_pid(km))
        stop_kernel(handle)
        raise
    pid = _kernel_pid(km)
    handle = KernelHandle(km=km, kc=kc, pid=pid, initial_children=_descendants(pid))
    return handle


def _kernel_pid(km: KernelManager) -> int:
    provisioner = km.provisioner
    process = getattr(provisioner, "process", None)
    pid = getattr(process, "pid", None)
    if pid is None:
        pid = getattr(provisioner, "pid", None)
    assert pid is not None, "could not determine the kernel pid from the provisioner"
    return int(pid)


def fork_server(supervisor_pid: int) -> psutil.Process | None:
    """The process the supervisor's workers are forked from, if running: the worker
    template (relaykernel/worker/template.py, named ``relay-template``), or with
    ``--Supervisor.worker_template=False`` the fork server (supervisor/launcher.py)."""
    for child in psutil.Process(supervisor_pid).children():
        try:
            if child.name() == "relay-template" or "multiprocess.forkserver" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            pass
    return None


def worker_processes(supervisor_pid: int) -> list[psutil.Process]:
    """The supervisor's worker processes: spawned ones are its children, forked ones
    the children of its fork server."""
    found = []
    try:
        for child in psutil.Process(supervisor_pid).children():
            if "spawn_main" in " ".join(child.cmdline()):  # the template too: a worker, built
                found.append(child)
        server = fork_server(supervisor_pid)
        if server is not None:
            found.extend(server.children())
    except psutil.Error:
        pass
    return found


def _descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def reap(procs: list[psutil.Process], wait: float) -> list[int]:
    """Wait (bounded) for these processes to end, SIGKILL the survivors; return their pids."""
    _, alive = psutil.wait_procs(procs, timeout=wait)
    killed = []
    for proc in alive:
        try:
            proc.kill()
            killed.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return killed


def stop_kernel(handle: KernelHandle, wait: float = 10.0) -> list[int]:
    """Shut down politely (bounded), then SIGKILL any survivors by pid.

    Returns the pids that had to be killed.
    """
    pids = {handle.pid, *handle.initial_children, *_descendants(handle.pid)}
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))  # remembers create_time: safe against pid reuse
        except psutil.NoSuchProcess:
            pass
    try:
        handle.kc.stop_channels()
    except Exception:
        pass
    try:
        if handle.km.has_kernel:
            handle.km.shutdown_kernel(now=False)
    except Exception:
        pass
    killed = reap(procs, wait)
    try:
        handle.km.cleanup_resources()
    except Exception:
        pass
    return killed
