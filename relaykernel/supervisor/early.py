"""The first ~50 ms of the supervisor: bind, answer kernel_info, start the worker.

A frontend that launches a kernel polls it with kernel_info_request until it
answers, then waits for its first result.  So before anything heavy is
imported (traitlets, multiprocess), this step, on zmq and the standard library
alone:

1. reads the connection file and binds the kernel's sockets and heartbeat;
2. starts :class:`EarlyResponder`, a thread that answers kernel_info (which
   needs no worker) and holds every other request, in order, for the loop;
3. starts the worker fork server, or the worker template (supervisor/launcher.py,
   ``--Supervisor.worker_template``), so IPython imports on another core while
   the supervisor loads the rest and builds its Application; then
   :meth:`EarlyStart.first_worker` forks the first worker from it.  Without
   either (``--Supervisor.standby_workers=0`` on the command line, or one that
   failed) the first worker is spawned here instead.

The worker template is forked from this process before step 1 (:func:`_fork_template`),
while it has no thread, no zmq context and glibc's default malloc: the template, and
every worker and snapshot forked from it, then share the interpreter's heap and the
modules imported so far with the supervisor rather than each holding a copy (3 to 4 MB less
PSS for the kernel: benchmarks/README.md, "Memory per kernel").  Only where the
supervisor's malloc is a worker's (heap.py: relaykernel's provisioner starts it with
huge pages); otherwise, or for a template started later, it is spawned.

The loop takes the sockets and the held requests over with
:meth:`EarlyResponder.handover`; from then on the main thread owns them.
When no connection file exists yet nobody is waiting on the ports: only step
3 happens here, and the Application binds and writes the file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any

import zmq

from .. import heap
from ..io_threads import batch_io_threads
from ..lazylog import LazyLogger
from ..signing import Signer, new_uuid
from .heartbeat import Heartbeat
from .kernel_info import kernel_info_content
from .outbox import Outbox
from .sockets import Incoming, KernelSockets, SocketOptions, TransportError, Verifier, curve_keys

log = LazyLogger("relaykernel.supervisor")

_CONNECTION_FILE_FLAGS = ("-f", "--f", "--Supervisor.connection_file")
#: ``0`` there: no standby, hence no worker template nor fork server (a config file is
#: read too late for the first worker, which is then forked, and the template stays)
_STANDBY_FLAGS = ("--Supervisor.standby_workers", "--standby-workers")
#: Supervisor.worker_template on the command line (read before the first worker starts)
_TEMPLATE_FLAGS = ("--Supervisor.worker_template",)
#: Supervisor.worker_template when the command line does not say
TEMPLATE_DEFAULT = True
#: Socket options that must be known before the sockets bind, which is before
#: the Application reads config files: only the command line can set them.
_SOCKET_OPTION_FLAGS = {"iopub_queue_limit": "--Supervisor.iopub_queue_limit",
                        "max_message_size": "--Supervisor.max_message_size"}
#: GIL switch interval while the responder shares the process with imports:
#: it gets the GIL within 1 ms of a request instead of 5.
_EARLY_SWITCH_INTERVAL = 0.001


class EarlyResponder(threading.Thread):
    """Owns the sockets until the loop runs: answers kernel_info and iopub
    subscriptions, holds the rest."""

    def __init__(self, sockets: KernelSockets, verifier: Verifier, out: Outbox) -> None:
        super().__init__(name="relaykernel-early", daemon=True)
        self._sockets = sockets
        self._verifier = verifier
        self._out = out
        self._held: list[Incoming] = []
        #: requests held so far, handed over or not
        self.received = 0
        #: a SIGINT came (interrupt()) after this many of them
        self.interrupted_after: int | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._interrupt_r, self._interrupt_w = os.pipe()
        os.set_blocking(self._interrupt_r, False)

    def run(self) -> None:
        poller = zmq.Poller()
        channels = {self._sockets.control: "control", self._sockets.shell: "shell"}
        for sock in channels:
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self._interrupt_r, zmq.POLLIN)
        poller.register(self._sockets.iopub, zmq.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._wake_r in events:
                return
            if self._interrupt_r in events:
                self._mark_interrupt(channels)
            if events.get(self._sockets.iopub):  # frontends subscribe right after launch
                self._out.welcome()
            for sock, channel in channels.items():  # control first, as in the loop
                if events.get(sock):
                    try:
                        self._drain(sock, channel)
                    except Exception:  # the loop takes over soon; never die silently
                        log.exception("early responder failed on %s", channel)

    def _drain(self, sock: zmq.Socket, channel: str) -> None:
        for msg in self._verifier.waiting(sock, channel):
            if msg.msg_type == "kernel_info_request":  # the loop, too, answers it at once
                self._out.status("busy", msg)
                self._out.reply(msg, kernel_info_content())
                self._out.status("idle", msg)
            else:
                self._held.append(msg)  # the loop routes them first, in arrival order
                self.received += 1

    def interrupt(self) -> None:
        """A SIGINT came (called from its handler, in the main thread): it is meant for
        the requests sent before it, so those that have arrived are read first."""
        if self.is_alive():
            try:
                os.write(self._interrupt_w, b"i")
                return
            except OSError:  # handed over meanwhile
                pass
        self.interrupted_after = self.received

    def _mark_interrupt(self, channels: dict[zmq.Socket, str]) -> None:
        os.read(self._interrupt_r, 512)
        for sock, channel in channels.items():
            try:
                self._drain(sock, channel)
            except Exception:
                log.exception("early responder failed on %s", channel)
        self.interrupted_after = self.received

    def start(self) -> None:
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(_EARLY_SWITCH_INTERVAL)
        super().start()

    def handover(self) -> list[Incoming]:
        """Stop; the caller's thread owns the sockets now. Returns the held requests."""
        os.write(self._wake_w, b"x")
        self.join()
        sys.setswitchinterval(self._switch_interval)
        try:
            if os.read(self._interrupt_r, 512):  # a SIGINT the thread had no time to mark
                self.interrupted_after = self.received
        except BlockingIOError:
            pass
        for fd in (self._wake_r, self._wake_w, self._interrupt_r, self._interrupt_w):
            os.close(fd)
        held, self._held = self._held, []
        return held


class EarlyStart:
    """What the early step decided and started, handed to the Application.

    (Not a dataclass: ``dataclasses`` would cost this step ~5 ms before kernel_info.)"""

    def __init__(self, key: bytes, signature_scheme: str, session_id: str, connection_file: str,
                 signer: Signer) -> None:
        self.key = key
        self.signature_scheme = signature_scheme
        self.session_id = session_id
        self.connection_file = connection_file  # absolute; may not exist yet (the app then writes it)
        #: its contents, read once here ({} when it did not exist)
        self.connection_info: dict[str, Any] = {}
        self.signer = signer
        #: the supervisor's (a forked template's code reads it too)
        self.pid = os.getpid()
        #: GLIBC_TUNABLES as the user had it (heap.take_inherited)
        self.inherited_tunables: str | None = None
        #: this process turned transparent huge pages off for itself (heap.allow_huge_pages)
        self.huge_pages_off = False
        #: what the sockets were (or are to be) bound with
        self.socket_options = SocketOptions()
        self.private_dir = ""
        self.worker: Any = None  # WorkerProcess (imported after the responder is up)
        self.worker_config: Any = None  # WorkerConfig of the first worker
        #: the fork server's WorkerLauncher, started here (None: workers are spawned)
        self.launcher: Any = None
        self._ctx: zmq.Context | None = None
        self._io_threads_batched = False
        #: bound from an existing connection file, else None (the app binds)
        self.sockets: KernelSockets | None = None
        self.heartbeat: Heartbeat | None = None
        self.verifier: Verifier | None = None
        self.responder: EarlyResponder | None = None

    def record_interrupt(self, signum: int, frame: object) -> None:
        """SIGINT handler until the loop runs (in the main thread, between imports).
        Without a responder no request can have come: nothing to interrupt."""
        if self.responder is not None:
            self.responder.interrupt()

    def first_worker(self) -> Any:
        """The first WorkerProcess: forked from the fork server, once that has imported
        IPython (it started with this step, so by now, or soon), else spawned.  Main
        thread, before the loop runs (the responder still answers kernel_info).

        None with the worker template: the pool forks the first worker once the
        template is READY (its startup files may take long: the loop, which answers
        every request, interrupts included, runs meanwhile)."""
        if self.worker is None and not (self.launcher is not None and self.launcher.uses_template
                                        and self.launcher.state.value != "failed"):
            from .launcher import WARM_UP_LIMIT
            from .worker_process import WorkerProcess

            assert self._ctx is not None
            number = 1
            if self.launcher is not None and self.launcher.wait_for_server(WARM_UP_LIMIT):
                try:
                    self.worker = WorkerProcess(self._ctx, number, self.private_dir, self.worker_config,
                                                start_method=self.launcher.context())
                except Exception as e:  # noqa: BLE001 - the server died meanwhile: spawn
                    log.warning("could not fork the first worker (%s); spawning it", e)
                    number = 2  # worker 1's endpoint may be unlinked when its socket is collected
            if self.worker is None:
                self.worker = WorkerProcess(self._ctx, number, self.private_dir, self.worker_config)
        if not self._io_threads_batched:
            batch_io_threads()  # libzmq's threads exist now: the worker's link started them
            self._io_threads_batched = True
        return self.worker

    @property
    def interrupted_after(self) -> int | None:
        """How many held requests came before a SIGINT of the early step (None: no SIGINT)."""
        return self.responder.interrupted_after if self.responder is not None else None

    def abort(self) -> None:
        """The kernel will not run (bad arguments, --help): stop what this step started,
        so the process exits now instead of waiting for the first worker."""
        if self.responder is not None:
            self.responder.handover()
        if self.worker is not None:
            self.worker.kill()
        if self.launcher is not None:
            self.launcher.close(kill=True)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.sockets is not None:
            self.sockets.close()
        if self.private_dir:
            import shutil

            shutil.rmtree(self.private_dir, ignore_errors=True)


def _arg(args: list[str], flags: tuple[str, ...]) -> str:
    """The value given to one of ``flags`` on the command line (``-f X`` or ``-f=X``), or ''."""
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
    return ""


def template_wanted(args: list[str]) -> bool:
    """Supervisor.worker_template as the command line sets it (else TEMPLATE_DEFAULT)."""
    value = _arg(args, _TEMPLATE_FLAGS).strip().lower()
    if value in ("true", "1", "yes", "false", "0", "no"):
        return value in ("true", "1", "yes")
    return True if _TEMPLATE_FLAGS[0] in args else TEMPLATE_DEFAULT  # the flag alone, or not given


def connection_file_arg(args: list[str]) -> str:
    """The connection file named on the command line, or ''."""
    return _arg(args, _CONNECTION_FILE_FLAGS)


def socket_options(args: list[str], info: dict[str, Any]) -> SocketOptions:
    """The limits given on the command line and the connection file's CurveZMQ keys.

    A value that is not an integer is left to the Application, whose traitlets
    reject it with a proper message."""
    options = SocketOptions(curve=curve_keys(info))
    for name, flag in _SOCKET_OPTION_FLAGS.items():
        value = _arg(args, (flag,))
        if value.strip().isdigit():
            setattr(options, name, int(value))
    return options


def _serve(early: EarlyStart, ctx: zmq.Context, info: dict[str, Any]) -> None:
    """Bind the connection file's ports and start answering on them."""
    transport, ip = info.get("transport", "tcp"), info.get("ip", "127.0.0.1")
    early.sockets = KernelSockets.bind_all(ctx, transport, ip, info, early.socket_options)
    early.heartbeat = Heartbeat(ctx, transport, ip, int(info.get("hb_port", 0)), early.socket_options)
    early.heartbeat.start()
    early.verifier = Verifier(early.signer)
    early.responder = EarlyResponder(early.sockets, early.verifier, Outbox(early.sockets, early.signer))
    early.responder.start()


def _worker_config(early: EarlyStart, args: list[str]) -> Any:
    """The first worker's WorkerConfig (the worker template's, before for_template)."""
    from ..spawn import WorkerConfig, ipython_args

    return WorkerConfig(
        key=early.key, signature_scheme=early.signature_scheme, session_id=early.session_id,
        connection_file=early.connection_file, crash_log=os.path.join(early.private_dir, "crash"),
        log_level=10 if "--debug" in args else 30, supervisor_pid=early.pid,  # logging.DEBUG, WARNING
        inherited_tunables=early.inherited_tunables, ipython_args=ipython_args(args),
        allow_huge_pages=early.huge_pages_off)


def _can_fork() -> bool:
    """Whether this process may fork a worker template: one thread (libzmq's count:
    no socket yet) and no zmq context.  A process with other threads may fork while
    one of them holds a lock (malloc's, libzmq's) that the child then waits on forever."""
    if not hasattr(os, "pidfd_open") or zmq.Context._instance is not None:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _fork_template(early: EarlyStart, args: list[str]) -> int | None:
    """Fork the first worker template (worker/template.py) from this process, now,
    before it has a thread, a zmq context or the malloc settings of heap.py: the
    template (and every worker it forks) shares this process's pages, the
    interpreter's heap and the modules both import, instead of holding a copy of
    its own as a spawned one does.  Returns its pid (None: spawn one later)."""
    import gc

    gc.freeze()  # the collector then never writes to the objects we share
    try:
        pid = os.fork()
    except OSError as e:
        log.warning("could not fork the worker template (%s)", e)
        return None
    if pid == 0:
        _be_template(early, args)  # never returns
    return pid


def _be_template(early: EarlyStart, args: list[str]) -> None:
    """In the forked template: drop what is the supervisor's, then serve as a spawned
    template would (spawn.run_worker), and exit without returning to the supervisor's
    code.  SIGINT is ignored already (begin), as a spawned worker starts."""
    import atexit

    code = 1
    try:
        atexit._clear()  # the supervisor's
        from . import private_dir

        for fd in private_dir._held:  # the supervisor's lock on its directory
            os.close(fd)
        private_dir._held.clear()
        if sys.stdin is not None:  # as multiprocess starts a process
            sys.stdin.close()
            sys.stdin = open(os.devnull)  # noqa: SIM115
        config = _worker_config(early, args).for_template(early.private_dir, 1)
        from ..spawn import run_worker

        run_worker(config, True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # noqa: BLE001, S110 - run_worker wrote it to the crash log
        pass
    finally:
        try:
            atexit._run_exitfuncs()  # the worker's own, as a spawned one's interpreter would
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
        finally:
            os._exit(code)


def begin(args: list[str]) -> EarlyStart:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until there is somewhere to record it (below)
    inherited_tunables = heap.take_inherited()
    # huge pages were added for the worker template forked below (heap.py): not for this heap
    huge_pages_off = os.environ.get(heap.TUNABLES_ENV) != inherited_tunables and heap.allow_huge_pages(False)
    path = connection_file_arg(args)
    info = {}
    if path and os.path.exists(path):
        with open(path) as f:
            info = json.load(f)
    if not path:
        from jupyter_core.paths import jupyter_runtime_dir

        path = os.path.join(jupyter_runtime_dir(), f"kernel-{new_uuid()}.json")
    # An existing file's key is the frontend's, even empty (unsigned messages, as
    # ipykernel honours it); only a file we write gets a fresh random key.
    key = info.get("key", "") if info else new_uuid()
    key = key.encode() if isinstance(key, str) else key
    if info and not key:
        log.warning("the connection file has an empty key: messages are not signed")
    scheme = info.get("signature_scheme", "hmac-sha256")
    session_id = new_uuid()
    signer = Signer(key, scheme, session_id)
    early = EarlyStart(key=key, signature_scheme=scheme, session_id=session_id,
                       connection_file=os.path.abspath(path), signer=signer)
    early.connection_info = info
    early.inherited_tunables, early.huge_pages_off = inherited_tunables, huge_pages_off
    standby = _arg(args, _STANDBY_FLAGS).strip() != "0"
    forked = None
    if (standby and template_wanted(args) and heap.started_as_a_worker_would(early.inherited_tunables)
            and _can_fork()):
        from . import private_dir

        early.private_dir = private_dir.create()  # 0700: the links stay ours
        forked = _fork_template(early, args)
    heap.keep_freed_memory()  # before the first buffer arrives (and after the fork: not the template's)
    # Frontends may interrupt as soon as kernel_info is answered, which is now,
    # before the loop installs its handlers (the default one would kill the
    # supervisor): the loop applies it to the requests that came before it.
    signal.signal(signal.SIGINT, early.record_interrupt)
    ctx: zmq.Context = zmq.Context.instance()
    try:  # keys that cannot be used stop the kernel: never a fallback to plain text
        early.socket_options = socket_options(args, info)
        if info:
            _serve(early, ctx, info)
    except TransportError as e:
        if forked is not None:
            os.kill(forked, signal.SIGKILL)
            os.waitpid(forked, 0)
        early.abort()
        raise SystemExit(f"relaykernel: cannot start: {e}") from None

    # the rest waits until kernel_info can be answered
    from . import private_dir
    from .launcher import ServerState, WorkerLauncher  # multiprocess: ~70 ms

    if not early.private_dir:
        early.private_dir = private_dir.create()  # 0700: the link stays ours
    config = _worker_config(early, args)
    early.worker_config, early._ctx = config, ctx
    if standby:
        template = config if template_wanted(args) else None
        early.launcher = WorkerLauncher(config.inherited_tunables, early.private_dir, template=template,
                                        ctx=ctx, forked_template=forked)
        early.launcher.warm_up()  # imports IPython now; the first worker is forked from it
    if early.launcher is None or early.launcher.state is ServerState.FAILED:
        early.first_worker()  # spawned: it imports IPython now
    elif early.sockets is not None:
        batch_io_threads()  # libzmq's threads exist now: the sockets above started them
        early._io_threads_batched = True
    return early
