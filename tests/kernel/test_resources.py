"""Memory soft limit, usage_request, and where large buffers live (relaykernel only).

The hard memory limit is part of the crash matrix in test_crash.py.
"""

from __future__ import annotations

import os
import time

import pytest

from relaykernel.heap import HUGEPAGE_TUNABLE, TUNABLES_ENV
from tests.kernel import crash_helpers
from tests.kernel.comm_helpers import (
    ECHO_TARGET,
    comm_msg,
    comm_open,
    comms_of,
    handled,
    new_comm_id,
    only,
)
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
    # MemoryError itself -- even after its `del l` ran.  So the cell is idempotent, and
    # retried (bounded); the variables must be there throughout.
    free_cell = ("if 'l' in globals():\n"
                 "    n = len(l)\n"
                 "    del l\n"
                 "import gc; gc.collect()")
    reply = None
    for _ in range(5):
        reply, _ = execute(kc, free_cell)
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


#: GROW inside a function: its list is a local of the frame the MemoryError is raised in.
GROW_IN_A_FUNCTION = "def grow():\n    " + GROW.replace("\n", "\n    ").rstrip() + "\ngrow()\n"


def test_a_function_stopped_at_the_soft_limit_gives_its_memory_back(relay, soft_spec) -> None:
    """The traceback of the soft limit's MemoryError holds the frame that grew, and
    IPython keeps the traceback (sys.last_traceback): the worker clears the frames'
    locals after the cell, so the memory it was stopped for goes back at once."""
    h = relay.start(soft_spec)
    kc = h.kc
    execute_ok(kc, "kept = 42")
    worker = h.worker_pid()
    before = _rss_mb(worker)
    reply, _ = execute(kc, GROW_IN_A_FUNCTION, timeout=30)
    assert reply["content"]["ename"] == "MemoryError", reply["content"]
    assert evaluate(kc, "__import__('sys').last_traceback is not None") == "True"  # %debug still has the frames
    assert _rss_mb(worker) < before + 100, (before, _rss_mb(worker))  # the 300+ MB it grew by are gone
    assert evaluate(kc, "kept") == "42" and h.worker_pid() == worker
    execute_ok(kc, "kept + 1")  # below the limit now: no MemoryError


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


# ------------------------------------------- large buffers and the processes' heaps
def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_the_supervisor_keeps_memory_for_the_next_large_buffer_and_gives_it_back_when_quiet(relay) -> None:
    """A 50 MB buffer is 12,800 pages: the supervisor receives it twice per echo
    (from the frontend and from the worker).  The second echo must land in
    memory the first one left mapped, and that memory goes back to the system
    once the kernel has been quiet for a few seconds (heap.py)."""
    h = relay.start(KERNEL_NAME)
    kc = h.kc
    sup = supervisor_pid(h)
    execute_ok(kc, ECHO_TARGET)
    comm_id = new_comm_id()
    handled(kc, comm_open(kc, comm_id, "echo"))
    payload = os.urandom(50 << 20)
    base = _rss_mb(sup)

    def echo() -> None:
        iopub = handled(kc, comm_msg(kc, comm_id, {"n": 1}, buffers=[payload]), timeout=60)
        back = only(comms_of(iopub, "comm_msg", comm_id))["buffers"]
        assert len(back) == 1 and bytes(back[0]) == payload

    echo()
    faults = _minor_faults(sup)
    echo()
    faults = _minor_faults(sup) - faults
    assert faults < 3000, f"the supervisor faulted {faults} pages in for the second 50 MB echo"
    assert _rss_mb(sup) > base + 40  # kept, until the kernel is quiet

    deadline = time.monotonic() + 20
    while _rss_mb(sup) > base + 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _rss_mb(sup) <= base + 20, f"{_rss_mb(sup) - base:.0f} MB still held 20 s after the last echo"


USER_TUNABLES = "glibc.malloc.perturb=0"


@pytest.mark.parametrize("inherited", [USER_TUNABLES, None], ids=["user-set", "unset"])
def test_the_worker_runs_with_huge_pages_and_user_code_sees_the_users_tunables(relay, inherited,
                                                                               monkeypatch) -> None:
    """glibc reads GLIBC_TUNABLES when a process starts: the worker's starting
    environment adds huge pages, but user code and the programs it starts see
    the variable as the kernel inherited it."""
    env = {TUNABLES_ENV: inherited} if inherited else {}
    if not inherited:
        monkeypatch.delenv(TUNABLES_ENV, raising=False)  # kernel_env() copies ours
    h = relay.start(KERNEL_NAME, env=env)
    worker = h.worker_pid()
    # glibc splits the variable's text in place as it parses it ("a:b" reads "a\0b")
    with open(f"/proc/{worker}/environ", "rb") as f:
        started_with = f.read().replace(b"\0", b":").decode()
    expected = f"{inherited}:{HUGEPAGE_TUNABLE}" if inherited else HUGEPAGE_TUNABLE
    assert f"{TUNABLES_ENV}={expected}:" in started_with
    if _thp_mode() in ("madvise", "always"):
        evaluate(h.kc, "len(globals().setdefault('_big', b'x' * (50 << 20)))")
        with open(f"/proc/{worker}/smaps_rollup") as f:
            huge_kb = next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
        assert huge_kb >= 40 << 10, f"a 50 MB object in the worker sits on {huge_kb} kB of huge pages"
    assert evaluate(h.kc, f"__import__('os').environ.get({TUNABLES_ENV!r})") == repr(inherited)
    shell = ("__import__('subprocess').run(['sh', '-c', 'echo \"[$GLIBC_TUNABLES]\"'],"
             " capture_output=True, text=True).stdout.strip()")
    assert evaluate(h.kc, shell) == repr(f"[{inherited or ''}]")


def _thp_mode() -> str:
    """The system's transparent huge page mode: always, madvise or never ('' if unknown)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return ""
