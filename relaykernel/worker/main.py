"""The worker process: set up, announce READY, wait for ACTIVATE, serve requests.

Runs in the worker's main thread (the one that executes user code).  The
worker leads its own process group so the supervisor can interrupt it and the
programs it started as one, and it dies with the supervisor: a parent-death
signal on Linux, and a watchdog thread that notices a new parent elsewhere.
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import zmq

from .. import CONNECTION_FILE_ENV, heap, progress, wire
from ..io_threads import batch_io_threads
from ..signing import Signer
from ..spawn import WorkerConfig
from . import cell_names
from .debugger import Debugger
from .interrupts import MAIN_THREAD_SIGNALS, write_stack_on_signal
from .link import Link
from .messages import Messenger, record_thread_parents
from .side import SideChannel
from .snapshot import Snapshots, become_worker
from .streams import FdCapture, OutputOrder, OutStream, after_fork_in_child, order_child_output

if TYPE_CHECKING:  # at run time imported in serve(), once the streams are captured (it loads IPython)
    from .kernel import WorkerKernel

log = logging.getLogger("relaykernel.worker")

#: os._exit before the worker wraps it (a restored snapshot wraps it again)
_REAL_EXIT = os._exit
#: event loops of the worker a snapshot was forked from (see _serve_forever)
_abandoned: list[asyncio.AbstractEventLoop] = []


def serve(config: WorkerConfig, template: bool = False) -> None:
    """Be a worker; with ``template``, the worker template (template.py): built as a
    worker is up to READY, then it forks the workers, each of which goes on here."""
    if template:
        from .template import name_process

        name_process()
    # The supervisor spawned us with SIGINT ignored, so an interrupt aimed at its
    # process group could not kill us half-started; our own group keeps it so, and
    # the kernel's InterruptGate takes SIGINT over once it exists.
    os.setpgrp()
    # SIGINT (an interrupt) and SIGUSR1 (the soft memory limit) must reach the main
    # thread: Linux may hand a process's signal to any thread that does not block it,
    # and one handed to a helper thread leaves a cell in time.sleep() or a blocking
    # call asleep until the supervisor gives up on it.  Threads started from here to
    # READY (ours, libzmq's, IPython's history thread) inherit the mask; then the main
    # thread alone unblocks them.
    signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    _die_with_parent(config.supervisor_pid)
    os.environ[CONNECTION_FILE_ENV] = config.connection_file
    cell_names.kernel_pid = config.supervisor_pid  # cells keep their file names across workers
    heap.restore_tunables(config.inherited_tunables)
    # 0600: private even if the directory's mode changes
    crash_log = open(os.open(config.crash_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),  # noqa: SIM115
                     "w")  # lives as long as the process
    faulthandler.enable(file=crash_log, all_threads=False)
    write_stack_on_signal(crash_log)  # where a cell ignoring an interrupt is stuck
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))

    ctx = zmq.Context()
    link = Link(ctx, config.endpoint)
    messenger = Messenger(Signer(config.key, config.signature_scheme, config.session_id), link)
    order = OutputOrder(messenger.publish_stream, messenger.current)  # one order for both streams
    stdout = OutStream("stdout", order, fileno=1, parents=messenger)
    stderr = OutStream("stderr", order, fileno=2, parents=messenger)
    link.on_malformed = lambda why: stderr.write(
        f"relaykernel: a message from the kernel's supervisor could not be read and was lost ({why}).\n")
    capture = FdCapture({1: stdout, 2: stderr})
    capture.start()
    order_child_output(capture)
    _log_to(capture.saved[2], config.log_level)
    link.tickers.append(lambda: order.flush_if_due(time.monotonic()))
    link.start()
    batch_io_threads(wait=0.05, expect=_IO_CONTEXTS)

    def in_forked_child() -> None:
        after_fork_in_child((stdout, stderr), capture)
        link.leave_to_parent()

    os.register_at_fork(after_in_child=in_forked_child)

    from . import compat
    from .kernel import WorkerKernel, install_streams
    from .shell import ShellApp, ZMQInteractiveShell

    _cwd_on_sys_path()
    install_streams(stdout, stderr)
    record_thread_parents(messenger)  # after our own threads started: they follow the latest request
    kernel = WorkerKernel(link, messenger, (stdout, stderr), capture)
    kernel.gate.install()
    side = _open_side(kernel, ctx, config.endpoint)
    _install_comm_hooks(kernel)
    app = ShellApp.configured(config.ipython_args, log)  # profile, config files, command line
    shell = app.make_shell(kernel)
    compat.install(ZMQInteractiveShell)
    kernel.shell = shell
    app.start_shell()  # extensions, startup files, exec_lines, as ipykernel before it is ready
    _mask_history_thread_after_forks(shell, template)
    os._exit = _exit_after_flushing(kernel, link, _REAL_EXIT)  # type: ignore[assignment]
    side.start()  # with the main thread's signals blocked: its thread inherits that
    signal.pthread_sigmask(signal.SIG_UNBLOCK, MAIN_THREAD_SIGNALS)
    ready: wire.ReadyMeta = {"version": wire.PROTOCOL_VERSION, "pid": os.getpid(),
                             "output_pipes": capture.read_ends()}
    link.send(wire.READY, ready)
    snapshots = Snapshots(kernel, os.path.dirname(config.crash_log), config.supervisor_pid, config.snapshots)
    counter = progress.Counter(config.progress_file) if config.progress_file else None
    if template:
        from .template import serve_as_template

        forked = serve_as_template(kernel, link, snapshots, config.supervisor_pid)
        if forked is None:  # SHUTDOWN
            os._exit(0)
        counter = _restored(kernel, link, side, forked, snapshots.supervisor_fd)
        snapshots.restored()
    while (wake := _serve_forever(kernel, link, counter, snapshots)) is not None:
        counter = _restored(kernel, link, side, wake, snapshots.supervisor_fd)
        snapshots.restored()
    snapshots.drop()
    os._exit(0)  # after flushing, as for user code


def _mask_history_thread_after_forks(shell: Any, template: bool) -> None:
    """Start IPython's history-saving thread again after each fork, with the main
    thread's signals blocked.

    IPython stops that thread before every fork (``os.register_at_fork``) and starts
    it again from the next cell that stores its input -- a thread started by user code,
    so with SIGINT unblocked.  Linux may then hand an interrupt to it rather than to the
    main thread, and a cell asleep in ``await`` or ``time.sleep`` stays asleep until the
    supervisor replaces the worker.  A worker forks for each snapshot, so this is a
    race in every session.  The template forks workers but runs no cells: it needs no
    history thread of its own (its children inherit this hook)."""
    template_pid = os.getpid() if template else None

    def restart_masked() -> None:
        hm = getattr(shell, "history_manager", None)
        if os.getpid() == template_pid or hm is None or hm.save_thread is not None:
            return
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
        try:
            hm._restart_thread_if_stopped()
        except Exception as e:  # noqa: BLE001 - the next cell would try again, unmasked
            log.debug("history thread not restarted after a fork: %s", e)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    os.register_at_fork(after_in_parent=restart_masked)


def _open_side(kernel: WorkerKernel, ctx: zmq.Context, endpoint: str) -> SideChannel:
    """The side socket (side.py), its messages handed to the subshells and the interrupt gate."""
    side = SideChannel(ctx, endpoint)
    kernel.subshells.install(side.handlers)
    side.handlers[wire.INTERRUPT] = lambda lm: kernel.gate.interrupt_threads()
    side.handlers[wire.DEBUG] = Debugger(kernel).receive
    return side


#: zmq contexts in a worker, each with its libzmq IO thread: the link's, and pyzmq's
#: garbage collector's (link.py starts it with the link)
_IO_CONTEXTS = 2


def _batch_io_threads_soon() -> None:
    """The new contexts' IO threads under SCHED_BATCH, as serve() does the first ones;
    by a thread of its own: an IO thread may take a few ms to name itself, and READY
    must not wait."""
    threading.Thread(target=batch_io_threads, kwargs={"wait": 0.5, "expect": _IO_CONTEXTS},
                     name="relaykernel-batch-io", daemon=True).start()


def _restored(kernel: WorkerKernel, link: Link, side: SideChannel, wake: wire.WakeMeta,
              supervisor_fd: int) -> progress.Counter:
    """In a snapshot's child, woken by the supervisor after the worker died: become a
    worker again (snapshot.py), with the user's state as it was, and say READY.
    In a child of the worker template (template.py): become a worker, and say READY."""
    signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)  # for the threads started here
    # started outside any request, as the worker's were: they follow the latest request
    no_parent = kernel.messenger.set_thread_parent({})
    link.reopen(wake["endpoint"])
    _batch_io_threads_soon()
    kernel.subshells.forget()
    side.reopen(link.context, wake["endpoint"])
    become_worker(kernel, wake, supervisor_fd)
    kernel.messenger.reset_thread_parent(no_parent)
    os._exit = _exit_after_flushing(kernel, link, _REAL_EXIT)  # type: ignore[assignment]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, MAIN_THREAD_SIGNALS)
    capture = kernel.fd_capture
    link.send(wire.READY, {"version": wire.PROTOCOL_VERSION, "pid": os.getpid(),
                           "output_pipes": capture.read_ends() if capture is not None else {}})
    return progress.Counter(wake["progress_file"])


def _cwd_on_sys_path() -> None:
    """Make ``sys.path`` what ipykernel's is: ``''`` (whatever directory ``%cd`` made
    current) right before the first site-packages, after the standard library, and
    not the absolute directory the kernel started in, which ``python -m`` put first.

    Imports then follow ``%cd`` as under ipykernel.  Called once the worker's own
    imports are done (as ipykernel adds ``''`` after its own), before the shell exists.
    """
    if sys.path and (sys.path[0] == "" or os.path.realpath(sys.path[0]) == os.path.realpath(os.getcwd())):
        del sys.path[0]
    if "" in sys.path or getattr(sys.flags, "safe_path", False):  # -P, PYTHONSAFEPATH (3.11+)
        return
    index = next((i for i, entry in enumerate(sys.path)
                  if os.path.basename(entry) in ("site-packages", "dist-packages")), 0)
    sys.path.insert(index, "")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _leave_fork_server() -> None:
    """Close this process's copy of the fork server's "alive" pipe (a forked worker
    inherits one), so that the server can exit with the supervisor.  User code that
    asks for a fork server then starts its own, as in a spawned worker."""
    from multiprocess import forkserver

    server = forkserver._forkserver  # private API of multiprocess
    alive_w = getattr(server, "_forkserver_alive_fd", None)
    if alive_w is not None:
        server._forkserver_alive_fd = None
        server._forkserver_address = None
        try:
            os.close(alive_w)
        except OSError:
            pass


def _exit_after_flushing(kernel: WorkerKernel, link: Link, real_exit: Callable[[int], Any]) -> Callable[[int], Any]:
    """``os._exit`` that first sends what is pending: for user code, what the cell
    printed before it reaches the frontend (stream batches and queued link messages
    would die with the process); the worker ends with it too.  Forked children,
    multiprocessing's included, end with os._exit too: they exit at once."""
    worker_pid = os.getpid()

    def _exit(code: int) -> Any:
        if os.getpid() == worker_pid:
            try:
                kernel.flush_streams()
                link.flush_and_stop()
            except BaseException as e:  # noqa: BLE001 - exiting is what was asked
                log.debug("could not flush before os._exit: %s", e)
        return real_exit(code)

    _exit.__doc__ = real_exit.__doc__
    return _exit


#: What the serving loop reads; INPUT_REPLY waits for input() (it reads them itself).
_MAIN_KINDS = frozenset({wire.REQUEST, wire.ACTIVATE, wire.ADOPT, wire.SHUTDOWN})


def _serve_forever(kernel: WorkerKernel, link: Link, counter: progress.Counter | None,
                   snapshots: Snapshots) -> wire.WakeMeta | None:
    """Serve on an asyncio event loop, which cells see as the running loop (as under
    ipykernel): their tasks run between requests and top-level await uses it.

    Snapshots are forked outside the running loop (it leaves its wait for that and
    serves on after).  Returns None at SHUTDOWN; in a snapshot's child once woken,
    what it was woken with: the caller rebuilds the worker and serves again, on a new
    loop (the old one's selector is the dead worker's)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    kernel.subshells.main_loop = loop
    try:
        while loop.run_until_complete(_serve(kernel, link, counter, snapshots)):
            wake = snapshots.take()
            if wake is not None:
                _abandoned.append(loop)
                return wake
        return None
    finally:
        asyncio.set_event_loop(None)


async def _serve(kernel: WorkerKernel, link: Link, counter: progress.Counter | None, snapshots: Snapshots) -> bool:
    """Serve until SHUTDOWN (False) or until a snapshot is due and no request came (True)."""
    while True:
        kernel.gate.idle()
        delay = snapshots.delay()
        if delay is not None:
            await link.wait_async(delay)
            if not link.input_waiting(_MAIN_KINDS):
                return True
        lm = await link.receive_async(_MAIN_KINDS)
        kernel.gate.busy()
        if lm.kind == wire.REQUEST:
            if counter is not None:
                counter.begin_request()
            # the supervisor marks requests that came on control; others came on shell
            channel = "control" if (lm.meta or {}).get("channel") == "control" else "shell"
            started = time.monotonic()
            await kernel.handle(list(lm.payload), channel)
            snapshots.after_request(wire.as_bytes(lm.payload[0]), time.monotonic() - started)
        elif lm.kind == wire.ACTIVATE:
            kernel.activate(cast(wire.ActivateMeta, lm.meta))
            snapshots.activate(cast(wire.ActivateOptions, lm.meta))
            snapshots.announce_targets()
            link.send(wire.ACTIVATED)
        elif lm.kind == wire.ADOPT:
            kernel.adopt(*snapshots.update_existing(lm.meta, list(lm.payload)))
        elif lm.kind == wire.SHUTDOWN:
            return False


def _install_comm_hooks(kernel: WorkerKernel) -> None:
    import comm

    from ..comm import Comm

    comm.create_comm = lambda *args, **kwargs: Comm(*args, kernel=kernel, **kwargs)
    comm.get_comm_manager = lambda: kernel.comm_manager


def _log_to(fd: int, level: int) -> None:
    handler = logging.StreamHandler(os.fdopen(os.dup(fd), "w", buffering=1))
    handler.setFormatter(logging.Formatter("[relaykernel worker %(levelname)s] %(message)s"))
    logger = logging.getLogger("relaykernel")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _die_with_parent(supervisor_pid: int) -> None:
    """Exit when the supervisor does, even if it is SIGKILLed.

    The parent is the supervisor, or the fork server it started (supervisor/
    launcher.py), which exits when the supervisor does once no worker keeps its
    "alive" pipe open: so the worker closes its copy, and dies with its parent."""
    parent = os.getppid()
    _leave_fork_server()
    if sys.platform.startswith("linux"):
        try:
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if parent == 1 or os.getppid() != parent:
        os._exit(1)  # the parent died before we got here, or before PDEATHSIG was set
    if supervisor_pid and parent != supervisor_pid and not _exists(supervisor_pid):
        os._exit(1)  # forked by a server whose supervisor is gone

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="relaykernel-parent-watch", daemon=True).start()
