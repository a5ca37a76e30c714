"""Workers forked from the worker template or the fork server (relaykernel/supervisor/launcher.py).

relaykernel forks its workers, the first one included, from a process that has
IPython imported: the worker template (relaykernel/worker/template.py, which has
its shell built too and stands in for the standby), or, with
``--Supervisor.worker_template=False``, multiprocess's fork server and a forked
standby.  So a worker is ready in milliseconds, crashes in a row do not wait for
one, and the workers share that process's pages.  These tests check what users
rely on with such workers, in both structures: they run cells, are interrupted,
are replaced after crashes one after another, and nothing outlives the kernel,
even when the supervisor or the template (server) is killed; and where there is
neither (none wanted, or it cannot start), workers are spawned and the kernel
runs as well.
"""

from __future__ import annotations

import os
import signal
import textwrap

import psutil
import pytest

from tests.kernel.crash_helpers import install_spec
from tests.kernel.helpers import (
    Deadline,
    KernelHandle,
    collect_iopub_until_idle,
    evaluate,
    execute,
    execute_ok,
    fork_server,
    get_reply,
    pid_exists,
    reap,
    relaykernel_only,
    start_kernel,
    stop_kernel,
    wait_for,
)

pytestmark = relaykernel_only


def _forked_spare(supervisor_pid: int) -> psutil.Process | None:
    """The fork server, once it has forked a spare (the first spare waits for it)."""
    server = fork_server(supervisor_pid)
    if server is None:
        return None
    try:
        return server if server.children() else None
    except psutil.Error:
        return None


def _crash(kc) -> None:
    reply, _ = execute(kc, "import os; os._exit(7)")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "WorkerDied"


def _start_sleeping_cell(kc) -> str:
    """Run a 60 s sleep; return once it runs (its execute_input is out)."""
    msg_id = kc.execute("import time; time.sleep(60)")
    deadline = Deadline(30)
    while True:
        msg = kc.get_iopub_msg(timeout=deadline.remaining())
        if msg["msg_type"] == "execute_input" and msg["parent_header"].get("msg_id") == msg_id:
            return msg_id


#: Snapshots off: after a crash a forked spare takes over, not the crashed worker's
#: snapshot (tests/kernel/test_snapshots.py covers those).
NO_SNAPSHOTS = ("--Supervisor.snapshots=False",)
#: multiprocess's fork server and a forked standby rather than the worker template.
FORK_SERVER = ("--Supervisor.worker_template=False",)


def _multiprocess_fork_server(supervisor_pid: int) -> psutil.Process | None:
    """multiprocess's fork server among the supervisor's children (never the template)."""
    for child in psutil.Process(supervisor_pid).children():
        try:
            if "multiprocess.forkserver" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            pass
    return None


def _start_with_a_forked_spare(kernel_name: str = "") -> KernelHandle:
    h = start_kernel(kernel_name or install_spec("relaykernel-fork-server-no-snapshots", (*FORK_SERVER, *NO_SNAPSHOTS)))
    try:
        execute_ok(h.kc, "1")
        wait_for(lambda: _forked_spare(h.pid), 60, what="a spare forked from the fork server")
    except BaseException:
        stop_kernel(h)
        raise
    return h


@pytest.fixture
def handle():
    h = _start_with_a_forked_spare()
    try:
        yield h
    finally:
        leftovers = stop_kernel(h)
        assert not leftovers, f"processes had to be killed after shutdown: {leftovers}"


def test_crashes_in_a_row_are_served_by_forked_workers(handle):
    """Three crashes back to back: each next cell runs, in a worker the fork server
    forked, with the session's execution count and a fresh namespace."""
    server = fork_server(handle.pid)
    assert server is not None
    for _ in range(3):
        execute_ok(handle.kc, "marker = 1")
        _crash(handle.kc)
        worker = int(evaluate(handle.kc, "__import__('os').getpid()"))
        assert psutil.Process(worker).ppid() == server.pid  # forked, not spawned
        assert evaluate(handle.kc, "'marker' in dir()") == "False"
    # a forked worker is a full kernel: rich output, magics, the comm machinery
    _, iopub = execute_ok(handle.kc, "%time x = 6 * 7\nfrom IPython.display import HTML; HTML('<b>ok</b>')")
    assert any(m["msg_type"] == "execute_result" and "text/html" in m["content"]["data"] for m in iopub)
    assert evaluate(handle.kc, "type(get_ipython().kernel.comm_manager).__name__") == "'CommManager'"


def test_forked_worker_takes_interrupts(handle):
    """A forked worker leads its own process group and takes SIGINT like a spawned one."""
    _crash(handle.kc)
    worker = int(evaluate(handle.kc, "__import__('os').getpid()"))
    assert psutil.Process(worker).ppid() == fork_server(handle.pid).pid
    assert evaluate(handle.kc, "__import__('os').getpgid(0) == __import__('os').getpid()") == "True"
    msg_id = _start_sleeping_cell(handle.kc)
    handle.km.interrupt_kernel()
    reply = get_reply(handle.kc, msg_id, timeout=30)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    collect_iopub_until_idle(handle.kc, msg_id, timeout=30)
    assert int(evaluate(handle.kc, "__import__('os').getpid()")) == worker  # interrupted, not replaced


def test_supervisor_sigkill_takes_the_fork_server_and_its_workers(handle):
    """Nobody is left to stop them: the server sees its alive pipe close (the workers
    closed their copies) and its workers die with it."""
    _crash(handle.kc)  # the active worker is now a forked one
    server = fork_server(handle.pid)
    wait_for(lambda: len(server.children()) == 2, 60, what="a forked active worker and a forked spare")
    supervisor = handle.process()
    descendants = supervisor.children(recursive=True)
    assert len(descendants) >= 3  # fork server, active worker, spare
    supervisor.kill()
    supervisor.wait(timeout=5)
    _, alive = psutil.wait_procs(descendants, timeout=10)
    left = [(p.pid, p.cmdline()) for p in alive]
    reap(alive, 0)  # by pid, so that a failure leaves nothing behind
    assert not left, f"left after the supervisor's SIGKILL: {left}"


def test_a_killed_fork_server_takes_its_workers_and_the_kernel_goes_on(handle):
    """SIGKILL of the fork server: its workers die with it, the cell in flight gets
    its error reply, and the kernel carries on with spawned or newly forked workers."""
    _crash(handle.kc)
    worker = int(evaluate(handle.kc, "__import__('os').getpid()"))
    server = fork_server(handle.pid)
    msg_id = _start_sleeping_cell(handle.kc)
    server.send_signal(signal.SIGKILL)
    reply = get_reply(handle.kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "WorkerDied"
    wait_for(lambda: not pid_exists(worker), 10, what="the forked worker to die with its server")
    assert evaluate(handle.kc, "6 * 7") == "42"
    assert pid_exists(handle.pid)


@pytest.mark.parametrize("structure", ["fork-server", "template"])
def test_a_forced_shutdown_takes_the_programs_a_forked_worker_started(structure):
    """shutdown_kernel(now=True) through the relaykernel provisioner kills each worker's
    process group, forked workers' (children of the fork server, or of the worker
    template, which leads a group of its own) as well as spawned ones'."""
    flags = FORK_SERVER if structure == "fork-server" else ("--Supervisor.worker_template=True",)
    handle = _start_with_a_forked_spare(install_spec(f"relaykernel-provisioned-{structure}-no-snapshots",
                                                     (*flags, *NO_SNAPSHOTS)))
    child = None
    try:
        _crash(handle.kc)
        worker = int(evaluate(handle.kc, "__import__('os').getpid()"))
        assert psutil.Process(worker).ppid() == fork_server(handle.pid).pid
        child = int(evaluate(handle.kc, "__import__('subprocess').Popen(['sleep', '300']).pid"))
        handle.km.shutdown_kernel(now=True)
        wait_for(lambda: not pid_exists(child), 10, what="the cell's sleep to be killed")
    finally:
        if child is not None and pid_exists(child):
            psutil.Process(child).kill()
        stop_kernel(handle)


def test_a_cell_that_kills_its_fork_server_does_not_hang_the_supervisor(handle):
    """The cell's worker (forked) kills its own parent, the fork server: the ready
    spare dies with it.  The supervisor must not activate the dead spare (a PAIR send
    to it blocked the loop forever while the heartbeat still answered): the cell gets
    its one error reply naming what happened, kernel_info is answered, and the next
    cell runs in a new worker."""
    def forked_pair() -> bool:
        server = fork_server(handle.pid)
        return server is not None and len(server.children()) == 2

    for _ in range(2):  # the dead spare is not always still listed as ready: try twice
        # crash until the active worker and the spare are both forked (after the server
        # died, the next worker is spawned while the server starts again)
        for _ in range(4):
            _crash(handle.kc)
            # the server (restarted, if it was killed) has forked a spare: then the pair is
            # forked within ms, unless the active worker was spawned while it restarted
            wait_for(lambda: (server := fork_server(handle.pid)) is not None and len(server.children()) >= 1,
                     20, what="a spare forked from the fork server")
            try:
                wait_for(forked_pair, 2, what="a forked active worker and a forked spare")
                break
            except AssertionError:
                continue
        assert forked_pair()
        reply, _ = execute(handle.kc, "import os, signal, time; os.kill(os.getppid(), signal.SIGKILL); "
                           "time.sleep(30)", timeout=20)
        assert reply["content"]["ename"] == "WorkerDied"
        assert "exit code 255" not in reply["content"]["evalue"]
        assert "fork server" in reply["content"]["evalue"]
        handle.kc.kernel_info()
        info = handle.kc.get_shell_msg(timeout=10)
        assert info["msg_type"] == "kernel_info_reply"
        assert evaluate(handle.kc, "6 * 7", timeout=60) == "42"


def _spawned_workers(supervisor_pid: int) -> list[psutil.Process]:
    """The supervisor's children that are spawned workers, not the worker template (a
    dead child's command line cannot be read: it is skipped, and the others still listed)."""
    found = []
    for child in psutil.Process(supervisor_pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.name() != TEMPLATE_NAME:
                found.append(child)
        except psutil.Error:
            pass
    return found


def _zombies(supervisor_pid: int) -> list[int]:
    found = []
    for child in psutil.Process(supervisor_pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.Error:
            pass
    return found


def test_the_first_worker_is_forked_from_the_fork_server():
    """From the start, the worker that runs the cells is a child of the fork server,
    as the standby is: both share the server's pages (IPython is imported once)
    instead of the first worker importing it again in an interpreter of its own."""
    handle = start_kernel(install_spec("relaykernel-fork-server", FORK_SERVER))
    try:
        worker = handle.worker_pid()
        server = fork_server(handle.pid)
        assert server is not None
        assert psutil.Process(worker).ppid() == server.pid
        assert _spawned_workers(handle.pid) == []
        wait_for(lambda: len(server.children()) == 2, 60, what="a standby forked beside the first worker")
        assert evaluate(handle.kc, "6 * 7") == "42"
    finally:
        stop_kernel(handle)


def test_without_a_standby_on_the_command_line_workers_are_spawned():
    """``--Supervisor.standby_workers=0`` on the kernel's command line: no fork server
    at all (read before the first worker starts); the first worker and its successor
    after a crash are spawned."""
    handle = start_kernel(install_spec("relaykernel-no-standby", ("--Supervisor.standby_workers=0", *NO_SNAPSHOTS)))
    try:
        first = handle.worker_pid()
        assert [p.pid for p in _spawned_workers(handle.pid)] == [first]
        _crash(handle.kc)
        second = handle.worker_pid()
        assert second != first
        assert [p.pid for p in _spawned_workers(handle.pid)] == [second]
        assert fork_server(handle.pid) is None and _multiprocess_fork_server(handle.pid) is None
    finally:
        stop_kernel(handle)


#: On PYTHONPATH, a sitecustomize that ends the fork server at once (its command
#: line names multiprocess.forkserver) and lets every other interpreter start.
_SERVER_DIES = textwrap.dedent("""\
    import os, sys
    if any("multiprocess.forkserver" in arg for arg in sys.orig_argv):
        os._exit(3)
""")


def test_a_fork_server_that_cannot_start_leaves_the_first_worker_spawned(tmp_path):
    """The server dies before its first fork: the first worker is spawned instead,
    without waiting for the server's time limit, and so is the standby; the dead
    server is reaped (not left a zombie for the kernel's life)."""
    (tmp_path / "sitecustomize.py").write_text(_SERVER_DIES)
    handle = start_kernel(install_spec("relaykernel-fork-server", FORK_SERVER), env={"PYTHONPATH": str(tmp_path)})
    try:
        assert evaluate(handle.kc, "6 * 7") == "42"
        worker = handle.worker_pid()
        assert psutil.Process(worker).ppid() == handle.pid
        wait_for(lambda: len(_spawned_workers(handle.pid)) == 2, 60, what="a spawned standby")
        wait_for(lambda: not _zombies(handle.pid), 10, what="the dead fork server to be reaped")
        assert fork_server(handle.pid) is None
    finally:
        stop_kernel(handle)


def _standbys(supervisor_pid: int, active: int) -> list[int]:
    server = fork_server(supervisor_pid)
    if server is None:
        return []
    try:
        return [p.pid for p in server.children() if p.pid != active]
    except psutil.Error:
        return []


def test_with_standby_workers_minus_one_the_snapshot_stands_in_for_the_standby():
    """``--Supervisor.standby_workers=-1``: no standby while the worker holds a
    snapshot (a crash wakes the snapshot), one again as soon as it holds none."""
    handle = start_kernel(install_spec("relaykernel-fork-server-standby-auto",
                                       (*FORK_SERVER, "--Supervisor.standby_workers=-1")))
    try:
        execute_ok(handle.kc, "x = 1")
        active = handle.worker_pid()
        wait_for(lambda: psutil.Process(active).children(), 30, what="the worker's snapshot (its child)")
        wait_for(lambda: not _standbys(handle.pid, active), 30, what="the standby to be retired")
        _crash(handle.kc)  # the snapshot takes over, with x
        assert evaluate(handle.kc, "x") == "1"
        execute_ok(handle.kc, "exit()")  # a fresh worker, forked on demand
        assert evaluate(handle.kc, "6 * 7") == "42"
        active = handle.worker_pid()
        execute_ok(handle.kc, "%snapshot off")
        wait_for(lambda: _standbys(handle.pid, active), 30, what="a standby, once no snapshot is kept")
        assert handle.worker_pid() == active
    finally:
        stop_kernel(handle)


def test_forked_workers_inherit_a_frozen_heap_and_collect_their_own_garbage():
    """The server freezes its objects before each fork (gc.freeze), so a worker's full
    collections leave the pages it shares with the server alone; the worker freezes
    nothing itself (its snapshots' forks), and collects its own cyclic garbage."""
    handle = start_kernel()
    try:
        frozen = int(evaluate(handle.kc, "__import__('gc').get_freeze_count()"))
        assert frozen > 10_000
        active = handle.worker_pid()
        wait_for(lambda: psutil.Process(active).children(), 30, what="the worker's snapshot (its child)")
        assert int(evaluate(handle.kc, "__import__('gc').get_freeze_count()")) == frozen
        execute_ok(handle.kc, "import gc\nclass Loop: pass\nloop = Loop(); loop.me = loop; del loop\n"
                              "collected = gc.collect()")
        assert int(evaluate(handle.kc, "collected")) >= 1
    finally:
        stop_kernel(handle)


# ------------------------------------------------------------ the worker template
#: The worker template (relaykernel/worker/template.py) on: one process that is both
#: the fork server and the standby.
TEMPLATE = ("--Supervisor.worker_template=True",)
#: Its process name (``ps``; its children take back their own).
TEMPLATE_NAME = "relay-template"


def template_of(supervisor_pid: int) -> psutil.Process | None:
    """The supervisor's worker template, if running."""
    for child in psutil.Process(supervisor_pid).children():
        try:
            if child.name() == TEMPLATE_NAME and child.status() != psutil.STATUS_ZOMBIE:
                return child
        except psutil.Error:
            pass
    return None


def _template_kernel(name: str, *extra: str) -> KernelHandle:
    return start_kernel(install_spec(name, (*TEMPLATE, *extra)))


def _workers_forked_by(template: psutil.Process) -> list[int]:
    try:
        return [p.pid for p in template.children()]
    except psutil.Error:
        return []


def test_the_template_forks_the_first_worker_and_stands_in_for_the_standby():
    """With the template, the kernel's processes are the supervisor, the template and
    the worker it forked (and the worker's snapshot): no fork server, no standby, and
    nothing spawned; the worker leads its own process group and has its own name."""
    handle = _template_kernel("relaykernel-template")
    try:
        worker = handle.worker_pid()
        template = template_of(handle.pid)
        assert template is not None
        assert psutil.Process(worker).ppid() == template.pid
        assert psutil.Process(worker).name() != TEMPLATE_NAME
        assert _multiprocess_fork_server(handle.pid) is None
        assert _spawned_workers(handle.pid) == []
        assert evaluate(handle.kc, "__import__('os').getpgid(0) == __import__('os').getpid()") == "True"
        wait_for(lambda: psutil.Process(worker).children(), 30, what="the worker's snapshot (its child)")
        execute_ok(handle.kc, "import time; time.sleep(1.5)")  # time for a standby to appear, if one would
        assert _workers_forked_by(template) == [worker]
        assert {p.pid for p in psutil.Process(handle.pid).children()} == {template.pid}
        frozen = int(evaluate(handle.kc, "__import__('gc').get_freeze_count()"))
        assert frozen > 10_000  # the template froze its heap before the fork (see the frozen-heap test)
    finally:
        stop_kernel(handle)


def _anonymous_shared_kb(pid: int) -> int:
    """Anonymous memory (the heap, pymalloc's arenas) that ``pid`` shares with another process."""
    shared = 0
    anonymous = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping: anonymous if it names no file
                fields = line.split()
                anonymous = len(fields) < 6 or fields[5] in ("[heap]", "[stack]")
            elif anonymous and head in ("Shared_Dirty:", "Shared_Clean:"):
                shared += int(line.split()[1])
    return shared


def test_the_first_template_is_forked_from_the_supervisor_and_shares_its_heap():
    """The early step forks the template from the supervisor (supervisor/early.py), rather
    than spawning it: the two share the supervisor's heap as it was then.  The template
    leads a process group of its own, as a spawned one does, and holds nothing of the
    supervisor's: not its private directory's lock, not its sockets."""
    handle = _template_kernel("relaykernel-template")
    try:
        execute_ok(handle.kc, "1")
        supervisor = psutil.Process(handle.pid)
        template = template_of(handle.pid)
        assert template is not None and template.ppid() == handle.pid
        assert template.cmdline() == supervisor.cmdline()  # a fork: no multiprocess.spawn command line
        assert _anonymous_shared_kb(handle.pid) > 1024, "the supervisor shares no heap with its template"
        assert os.getpgid(template.pid) == template.pid
        own = {f.path for f in template.open_files()}
        assert not [p for p in own if p.endswith("alive.lock")], own
        ports = {c.laddr.port for c in supervisor.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert ports and not [c for c in template.net_connections("tcp") if c.laddr.port in ports]
        # the provisioner starts the supervisor with a worker's huge pages (heap.py), for the
        # template to inherit; the supervisor keeps transparent huge pages off for itself
        assert _thp_enabled(handle.pid) in (None, False)
        assert _thp_enabled(template.pid) in (None, True)
        assert _thp_enabled(handle.worker_pid()) in (None, True)
    finally:
        stop_kernel(handle)


def _thp_enabled(pid: int) -> bool | None:
    """Whether transparent huge pages may back ``pid``'s memory (/proc/PID/status; None: not said)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("THP_enabled:"):
                return line.split()[1] == "1"
    return None


def test_crashes_in_a_row_are_served_by_template_forks():
    """Three crashes back to back: each next cell runs in a new worker the template
    forked, with the session's execution count and a fresh namespace; a forked worker
    is a full kernel (rich output, magics, comms)."""
    handle = _template_kernel("relaykernel-template-no-snapshots", *NO_SNAPSHOTS)
    try:
        # a worker first: the kernel answers kernel_info (ready) before its template
        # has forked one, or even named itself
        seen = {handle.worker_pid()}
        template = template_of(handle.pid)
        assert template is not None
        for _ in range(3):
            execute_ok(handle.kc, "marker = 1")
            _crash(handle.kc)
            worker = int(evaluate(handle.kc, "__import__('os').getpid()"))
            assert worker not in seen
            seen.add(worker)
            assert psutil.Process(worker).ppid() == template.pid
            assert evaluate(handle.kc, "'marker' in dir()") == "False"
        reply, _ = execute(handle.kc, "import os; os._exit(7)")
        assert "exit code 7" in reply["content"]["evalue"]  # the template told how its child ended
        _, iopub = execute_ok(handle.kc, "%time x = 6 * 7\nfrom IPython.display import HTML; HTML('<b>ok</b>')")
        assert any(m["msg_type"] == "execute_result" and "text/html" in m["content"]["data"] for m in iopub)
        assert evaluate(handle.kc, "type(get_ipython().kernel.comm_manager).__name__") == "'CommManager'"
        assert template_of(handle.pid).pid == template.pid
    finally:
        stop_kernel(handle)


def test_a_template_fork_takes_interrupts():
    """A worker forked from the template leads its own process group and takes SIGINT."""
    handle = _template_kernel("relaykernel-template-no-snapshots", *NO_SNAPSHOTS)
    try:
        _crash(handle.kc)
        worker = int(evaluate(handle.kc, "__import__('os').getpid()"))
        assert psutil.Process(worker).ppid() == template_of(handle.pid).pid
        msg_id = _start_sleeping_cell(handle.kc)
        handle.km.interrupt_kernel()
        reply = get_reply(handle.kc, msg_id, timeout=30)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        collect_iopub_until_idle(handle.kc, msg_id, timeout=30)
        assert int(evaluate(handle.kc, "__import__('os').getpid()")) == worker  # interrupted, not replaced
        assert template_of(handle.pid) is not None  # the kernel's group's SIGINT spared it
    finally:
        stop_kernel(handle)


def test_supervisor_sigkill_takes_the_template_its_workers_and_their_snapshots():
    """Nobody is left to stop them: the template dies with its parent, the workers it
    forked (and their snapshots) watch the supervisor itself."""
    handle = _template_kernel("relaykernel-template")
    try:
        execute_ok(handle.kc, "x = 1")
        worker = handle.worker_pid()
        wait_for(lambda: psutil.Process(worker).children(), 30, what="the worker's snapshot (its child)")
        descendants = handle.process().children(recursive=True)
        assert len(descendants) >= 3  # template, worker, snapshot
        supervisor = handle.process()
        supervisor.kill()
        supervisor.wait(timeout=5)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        left = [(p.pid, p.name()) for p in alive]
        reap(alive, 0)
        assert not left, f"left after the supervisor's SIGKILL: {left}"
    finally:
        stop_kernel(handle)


def test_a_killed_template_leaves_the_worker_running_and_is_replaced():
    """SIGKILL of the template: the worker it forked goes on with its cell and its
    variables (it watches the supervisor, not its parent); a new template is started,
    and the next crash is served by one of its forks.  A worker that ends after its
    template says so (its exit status went with the template)."""
    handle = _template_kernel("relaykernel-template-no-snapshots", *NO_SNAPSHOTS)
    orphan = None
    try:
        execute_ok(handle.kc, "kept = 41")
        orphan = handle.worker_pid()
        template = template_of(handle.pid)
        msg_id = handle.kc.execute("import time; time.sleep(1); kept += 1")
        template.kill()
        reply = get_reply(handle.kc, msg_id, timeout=30)
        assert reply["content"]["status"] == "ok"
        assert evaluate(handle.kc, "kept") == "42"
        assert handle.worker_pid() == orphan
        wait_for(lambda: (t := template_of(handle.pid)) is not None and t.pid != template.pid, 60,
                 what="a new template")
        reply, _ = execute(handle.kc, "import os; os._exit(7)")
        assert reply["content"]["ename"] == "WorkerDied"
        assert "template" in reply["content"]["evalue"]  # its status died with the old template
        worker = handle.worker_pid()
        assert psutil.Process(worker).ppid() == template_of(handle.pid).pid
    finally:
        if orphan is not None and pid_exists(orphan):
            reap([psutil.Process(orphan)], 0)
        stop_kernel(handle)


def test_with_the_template_and_no_standby_on_the_command_line_workers_are_spawned():
    """``--Supervisor.standby_workers=0`` still means no template and no fork server."""
    handle = _template_kernel("relaykernel-template-no-standby", "--Supervisor.standby_workers=0", *NO_SNAPSHOTS)
    try:
        first = handle.worker_pid()
        assert [p.pid for p in _spawned_workers(handle.pid)] == [first]
        _crash(handle.kc)
        second = handle.worker_pid()
        assert [p.pid for p in _spawned_workers(handle.pid)] == [second]
        assert template_of(handle.pid) is None and _multiprocess_fork_server(handle.pid) is None
    finally:
        stop_kernel(handle)


#: On PYTHONPATH, a sitecustomize that ends any process of the kernel's as it forks
#: (the template at each FORK; snapshots are off, and nothing else forks).
_FORKS_DIE = textwrap.dedent("""\
    import os

    def _die_if_template():  # the supervisor forks too: its first template
        with open("/proc/self/comm") as f:
            if f.read().strip() == "relay-template":
                os._exit(3)

    os.register_at_fork(before=_die_if_template)
""")


def test_a_template_that_dies_at_each_fork_is_restarted_a_few_times_then_workers_are_spawned(tmp_path):
    """Every template dies as it forks: each worker is spawned instead, at once; the
    template is started again a bounded number of times (launcher.MAX_WARM_UPS), then
    no more, and a spawned standby stands by; no dead template is left a zombie."""
    (tmp_path / "sitecustomize.py").write_text(_FORKS_DIE)
    handle = start_kernel(install_spec("relaykernel-template-no-snapshots", (*TEMPLATE, *NO_SNAPSHOTS)),
                          env={"PYTHONPATH": str(tmp_path)})
    try:
        assert evaluate(handle.kc, "6 * 7") == "42"
        assert psutil.Process(handle.worker_pid()).ppid() == handle.pid  # spawned
        templates = set()
        for _ in range(4):
            wait_for(lambda: template_of(handle.pid) is not None or len(_spawned_workers(handle.pid)) == 2, 60,
                     what="a template, or a spawned standby once none is started any more")
            if (t := template_of(handle.pid)) is not None:
                templates.add(t.pid)
            _crash(handle.kc)
            assert evaluate(handle.kc, "6 * 7") == "42"
        assert 1 <= len(templates) <= 3
        wait_for(lambda: len(_spawned_workers(handle.pid)) == 2, 60, what="a spawned standby")
        assert template_of(handle.pid) is None
        wait_for(lambda: not _zombies(handle.pid), 10, what="the dead templates to be reaped")
    finally:
        stop_kernel(handle)
