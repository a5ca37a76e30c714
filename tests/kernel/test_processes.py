"""Which processes a kernel has, and user code that starts processes of its own.

relaykernel's tree is the supervisor, the fork server and the workers (the
active one, forked standbys, the active worker's snapshot): no resource tracker
of ``multiprocess`` any more (supervisor/launcher.py: ``without_resource_tracker``).
User code that uses ``multiprocessing`` or ``multiprocess`` in a cell still gets
pools, child processes, shared memory and a resource tracker of its own.
"""

from __future__ import annotations

import textwrap

import psutil

from tests.kernel.helpers import (
    execute_ok,
    fork_server,
    relaykernel_only,
    stream_text,
    wait_for,
)


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


@relaykernel_only
def test_the_kernel_has_no_resource_tracker(kernel):
    """Every process of the tree has a role: fork server, worker, or a worker's fork
    (snapshot); none is multiprocess's resource tracker."""
    execute_ok(kernel.kc, "1")
    server = wait_for(lambda: fork_server(kernel.pid), 60, what="the fork server")
    wait_for(lambda: server.children(), 60, what="a standby forked from the fork server")
    active = kernel.worker_pid()
    tree = kernel.process().children(recursive=True)
    trackers = [(p.pid, _cmdline(p)) for p in tree if "resource_tracker" in _cmdline(p)]
    assert not trackers, f"a resource tracker runs: {trackers}"
    workers = {p.pid for p in kernel.process().children() if p.pid != server.pid}
    workers |= {p.pid for p in server.children()}
    assert active in workers
    for p in tree:
        assert p.pid == server.pid or p.pid in workers or p.ppid() in workers, (
            f"a process without a role: {p.pid} {_cmdline(p)}")


POOL_AND_SHARED_MEMORY = textwrap.dedent("""\
    import multiprocessing as mp
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=16)

    def fill(name):
        block = shared_memory.SharedMemory(name=name)
        block.buf[:5] = b"hello"
        block.close()

    child = mp.get_context("fork").Process(target=fill, args=(shm.name,))
    child.start()
    child.join(30)
    print("child", child.exitcode, bytes(shm.buf[:5]))
    shm.close()
    shm.unlink()
    for method in ("fork", "spawn"):
        with mp.get_context(method).Pool(2) as pool:
            print(method, sorted(pool.map(abs, [-3, -1, -2], chunksize=1)))
""")


def test_a_cell_uses_a_multiprocessing_pool_and_shared_memory(kernel):
    _, iopub = execute_ok(kernel.kc, POOL_AND_SHARED_MEMORY, timeout=90)
    assert stream_text(iopub) == "child 0 b'hello'\nfork [1, 2, 3]\nspawn [1, 2, 3]\n"


MULTIPROCESS_TRACKER = textwrap.dedent("""\
    import os, stat
    import multiprocess as mpp
    from multiprocess import resource_tracker, shared_memory

    block = shared_memory.SharedMemory(create=True, size=16)
    print("registered through a pipe", stat.S_ISFIFO(os.fstat(resource_tracker._resource_tracker._fd).st_mode))
    with mpp.get_context("spawn").Pool(1) as pool:
        print("spawn", pool.map(abs, [-4]))
""")


def test_multiprocess_in_a_cell_registers_with_a_live_resource_tracker(kernel):
    """Shared memory created with ``multiprocess`` is registered with a running
    tracker, which unlinks it if the cell's process dies holding it: the worker
    starts one of its own (the supervisor's stand-in, /dev/null, is not passed on
    to user code)."""
    _, iopub = execute_ok(kernel.kc, MULTIPROCESS_TRACKER, timeout=90)
    assert stream_text(iopub) == "registered through a pipe True\nspawn [4]\n"
    trackers = [p for p in kernel.process().children(recursive=True)
                if "multiprocess.resource_tracker" in _cmdline(p)]
    assert len(trackers) == 1
    execute_ok(kernel.kc, "block.close(); block.unlink()")
