"""The supervisor as a traitlets Application: configuration, logging, wiring.

Runs in the supervisor's main thread.  Reads (or writes) the connection file,
binds the sockets, starts the heartbeat thread and hands everything to
:class:`~relaykernel.supervisor.loop.SupervisorLoop` by constructor.
Configure it the Jupyter way: ``--Supervisor.standby_workers=2`` on the
command line or ``c.Supervisor.standby_workers = 2`` in
``relaykernel_config.py`` on the Jupyter config path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import uuid
from typing import Any

import zmq
from jupyter_core.paths import jupyter_config_path
from traitlets import Any as AnyTrait
from traitlets import Bool, CaselessStrEnum, Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import Application

from .. import CONNECTION_FILE_ENV, __version__
from ..spawn import IPYTHON_ALIASES, IPYTHON_FLAGS
from .early import EarlyStart, begin
from .heartbeat import Heartbeat
from .loop import Settings, SupervisorLoop
from .resources import GIB, MemoryGuard
from .sockets import IOPUB_QUEUE_LIMIT, MAX_MESSAGE_SIZE, KernelSockets, SocketOptions, Verifier

log = logging.getLogger("relaykernel.supervisor")


class Supervisor(Application):
    """Start relaykernel: a supervisor that runs your code in a replaceable worker."""

    name = "relaykernel"
    version = __version__
    description = __doc__

    connection_file = Unicode("", config=True, help="The kernel's JSON connection file. "
                              "Written (mode 0600, random ports) when absent or not given.")
    ip = Unicode("127.0.0.1", config=True, help="Address to bind when writing a new connection "
                 "file. Loopback by default: only this machine can reach the kernel.")
    transport = CaselessStrEnum(["tcp", "ipc"], "tcp", config=True, help="zmq transport for new connection files.")
    standby_workers = Integer(1, min=-1, config=True, help="Warm workers kept ready (shell built) "
                              "so a crashed or restarted worker is replaced in milliseconds. The worker "
                              "template counts as one (a new worker is a ~10 ms fork of it); each more "
                              "is a forked worker that costs ~3 MB of its own. Without the template: "
                              "each costs ~11 MB of its own (~15 MB PSS); -1: one, but none while the "
                              "worker holds a snapshot. 0 on the command line: no template nor fork "
                              "server either (new workers are spawned: ~0.5 s).")
    worker_template = Bool(True, config=True, help="Fork workers from the worker template: one process "
                           "that has built its shell, as a standby has, and whose pages the workers "
                           "share, as with a fork server; it stands in for both, and for one standby "
                           "worker (standby_workers counts it). False: multiprocess's fork server and "
                           "forked standbys. Command line only: read before the first worker starts.")
    interrupt_grace = Float(5.0, config=True, help="Seconds a cell may ignore an interrupt "
                            "(native code that does not check signals) before the worker is replaced.")
    subshell_overlap_after = Float(1.0, config=True, help="Seconds a request must have run before a "
                                   "request of another subshell starts beside it (shorter ones never "
                                   "overlap: pyplot and other global state stay consistent); 0: always "
                                   "at once, as ipykernel; negative: never beside another.")
    memory_limit = Float(0.0, config=True, help="Hard memory limit of the worker (with its "
                         "children) in GiB; past it the worker is replaced with a clear error. 0: off.")
    memory_soft_limit = Float(0.0, config=True, help="Soft memory limit in GiB; past it the running "
                              "cell gets a MemoryError and the worker keeps its variables. 0: off.")
    inplace_restart = Bool(config=True, help="On shutdown_request with restart, swap the worker and "
                           "keep the supervisor (and comms). On by default when launched by the "
                           "relaykernel provisioner, which expects it; otherwise the supervisor exits "
                           "as any kernel does and jupyter_client starts a new one.")

    @default("inplace_restart")
    def _default_inplace_restart(self) -> bool:
        return os.environ.get("RELAYKERNEL_INPLACE_RESTART") == "1"

    iopub_queue_limit = Integer(IOPUB_QUEUE_LIMIT, min=0, config=True, help="Messages iopub queues "
                                "for one subscriber that does not read; past it, that subscriber alone "
                                "misses messages. Print output leaves the worker in batches of at most "
                                "64 KiB, so the default bounds what a stalled client costs to ~70 MB. "
                                "0: unlimited. Command line only: the sockets bind before config files "
                                "are read.")
    max_message_size = Integer(MAX_MESSAGE_SIZE, min=0, config=True, help="Largest frame in bytes "
                               "accepted on shell, control and stdin (a comm buffer is one frame); a "
                               "larger one closes its connection before it is buffered. 0: unlimited. "
                               "Command line only: the sockets bind before config files are read.")

    early = AnyTrait(None, allow_none=True, help="An EarlyStart from __main__: its worker is already starting.")

    snapshots = Bool(True, config=True, help="Keep a snapshot of the worker (a forked copy, taken when it "
                     "is idle after a cell) so that a crash rolls the variables back to it instead of losing them.")
    snapshot_max_memory = Float(config=True, help="GiB: no snapshot is taken of a worker whose resident "
                                "memory is larger (its cells could make the snapshot's copy-on-write pages "
                                "double it); said once on stderr. Default: half of memory_limit when it is "
                                "set, else no limit (0).")

    snapshot_cost_share = Float(0.025, config=True, help="What snapshots may cost, as a share of the cells' "
                                "time (the page faults a snapshot makes the cells after it pay) and of the "
                                "session's (those and its fork, in the quiet between cells): the next snapshot "
                                "waits until the last one's cost is that small a part of the time since. "
                                "Higher: snapshots closer together (a crash rolls back over fewer cells), "
                                "cells slower. 0.025 is what ElasticNotebook reports for itself.")

    @validate("snapshot_cost_share")
    def _valid_share(self, proposal: Any) -> float:
        share = float(proposal["value"])
        if not 0 < share <= 1:
            raise TraitError(f"snapshot_cost_share must be in (0, 1], not {share}")
        return share

    @default("snapshot_max_memory")
    def _default_snapshot_max_memory(self) -> float:
        return self.memory_limit / 2

    print_connection_hint = Bool(True, config=True,
                                 help="Print how to attach when the kernel writes its own connection file.")

    aliases = {
        "f": "Supervisor.connection_file",
        "ip": "Supervisor.ip",
        "transport": "Supervisor.transport",
        "standby-workers": "Supervisor.standby_workers",
        "interrupt-grace": "Supervisor.interrupt_grace",
        "memory-limit": "Supervisor.memory_limit",
        "memory-soft-limit": "Supervisor.memory_soft_limit",
        "log-level": "Application.log_level",
        **IPYTHON_ALIASES,  # for the worker's IPython (spawn.py), as ipykernel takes them
    }
    flags = {
        "debug": ({"Application": {"log_level": logging.DEBUG}}, "Log everything (level DEBUG)."),
        **IPYTHON_FLAGS,
    }

    def emit_alias_help(self) -> Any:
        """--help: the IPython options are named only (their classes live in the worker)."""
        own = self.aliases
        self.aliases = {name: trait for name, trait in own.items() if name not in IPYTHON_ALIASES}
        try:
            yield from super().emit_alias_help()
        finally:
            self.aliases = own
        yield "IPython options, applied by the worker's shell as ipykernel applies them:"
        yield "    " + " ".join(f"--{name}" for name in IPYTHON_ALIASES)

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.WARNING

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)
        for path in jupyter_config_path():
            self.load_config_file("relaykernel_config", path=path)
        # command-line options win over config files
        if self.cli_config:
            self.update_config(self.cli_config)
        self._setup_logging()

    def _level(self) -> int:
        """``log_level`` as a number (traitlets turns level names given on the command line into numbers)."""
        return int(self.log_level)  # type: ignore[call-overload,no-any-return]

    def _setup_logging(self) -> None:
        logger = logging.getLogger("relaykernel")
        logger.setLevel(self._level())
        if not logger.handlers:
            handler = logging.StreamHandler(sys.__stderr__)
            handler.setFormatter(logging.Formatter("[relaykernel %(levelname)s %(asctime)s] %(message)s"))
            logger.addHandler(handler)
        logger.propagate = False

    def _read_connection(self, early: EarlyStart) -> dict[str, Any]:
        if early.connection_info and early.connection_file == os.path.abspath(self.connection_file):
            return dict(early.connection_info)  # early.py read it
        if self.connection_file and os.path.exists(self.connection_file):  # named by a config file
            with open(self.connection_file) as f:
                info: dict[str, Any] = json.load(f)
            return info
        return {"ip": self.ip, "transport": self.transport, "key": str(uuid.uuid4()),
                "signature_scheme": "hmac-sha256"}

    def _early(self) -> EarlyStart:
        """The early start from __main__, or one made now (when run another way)."""
        if self.early is None:
            self.early = begin(["-f", self.connection_file] if self.connection_file else [])
        if not self.connection_file:
            self.connection_file = self.early.connection_file
        return self.early

    def start(self) -> None:
        early = self._early()
        info = self._read_connection(early)
        info["key"], info["signature_scheme"] = early.key, early.signature_scheme
        transport, ip = info.get("transport", "tcp"), info.get("ip", "127.0.0.1")
        ctx: zmq.Context = zmq.Context.instance()
        sockets, heartbeat = early.sockets, early.heartbeat
        options = self._socket_options(early)
        if sockets is None or heartbeat is None:  # no connection file yet: bind, then write it
            sockets = KernelSockets.bind_all(ctx, transport, ip, info, options)
            heartbeat = Heartbeat(ctx, transport, ip, int(info.get("hb_port", 0)), options)
            heartbeat.start()
        _log_encryption(transport, options)
        wrote_connection_file = not os.path.exists(self.connection_file)
        if wrote_connection_file:
            self._write_connection_file(info, sockets.ports, heartbeat.port, early.key)
        os.environ[CONNECTION_FILE_ENV] = os.path.abspath(self.connection_file)
        private_dir = early.private_dir
        first_worker = early.first_worker()  # forked once the fork server has IPython loaded (None: the template's)
        held = early.responder.handover() if early.responder else None  # the sockets are ours now
        try:
            loop = SupervisorLoop(
                ctx=ctx, signer=early.signer, verifier=early.verifier or Verifier(early.signer),
                sockets=sockets, private_dir=private_dir,
                worker_config=dataclasses.replace(
                    early.worker_config, snapshots=self.snapshots,
                    snapshot_max_memory=int(self.snapshot_max_memory * GIB),
                    snapshot_cost_share=self.snapshot_cost_share),
                first_worker=first_worker, launcher=early.launcher, held=held,
                settings=Settings(
                    standby_workers=self.standby_workers, interrupt_grace=self.interrupt_grace,
                    inplace_restart=self.inplace_restart, log_level=self._level(),
                    subshell_overlap_after=self.subshell_overlap_after,
                    memory_guard=MemoryGuard(int(self.memory_soft_limit * GIB), int(self.memory_limit * GIB))))
            if early.interrupted_after:  # a SIGINT came while the early step held requests
                covered = (held or [])[: early.interrupted_after]
                # once the loop has queued them: the first timer runs after the held requests
                loop.timers.after(0, lambda: loop.answers.interrupt_waiting(covered))
            loop.run()
        finally:
            heartbeat.stop()
            sockets.close()
            shutil.rmtree(private_dir, ignore_errors=True)
            if wrote_connection_file:  # ours to remove, as ipykernel does
                try:
                    os.unlink(self.connection_file)
                except OSError:
                    pass

    def _socket_options(self, early: EarlyStart) -> SocketOptions:
        """The sockets' limits: the command line's when the early step bound them, else this config's."""
        options: SocketOptions = early.socket_options
        for name in ("iopub_queue_limit", "max_message_size"):
            value = getattr(self, name)
            if getattr(options, name) == value:
                continue
            if early.sockets is None:
                setattr(options, name, value)
            else:
                log.warning("Supervisor.%s=%s is not applied: the sockets were bound with %s before "
                            "config files were read; give it on the kernel's command line",
                            name, value, getattr(options, name))
        return options

    def _write_connection_file(self, info: dict[str, Any], ports: dict[str, int], hb_port: int, key: bytes) -> None:
        from jupyter_client.connect import write_connection_file

        os.makedirs(os.path.dirname(self.connection_file), exist_ok=True)
        write_connection_file(
            self.connection_file, ip=info["ip"], key=key, transport=info["transport"],
            shell_port=ports["shell"], iopub_port=ports["iopub"], stdin_port=ports["stdin"],
            control_port=ports["control"], hb_port=hb_port, signature_scheme="hmac-sha256",
            kernel_name="relaykernel")
        if self.print_connection_hint:
            print(f"relaykernel is running. To connect a client:\n"
                  f"    jupyter console --existing {self.connection_file}", file=sys.__stdout__, flush=True)


def _log_encryption(transport: str, options: SocketOptions) -> None:
    """Say whether the transport is encrypted, as ipykernel does."""
    if options.encrypted:
        log.info("Detected CurveZMQ secret key; using transport encryption")
    elif transport == "tcp":
        log.warning("Kernel is running over TCP without encryption. All communication (including "
                    "code and outputs) is sent in plain text and is susceptible to eavesdropping. "
                    "Use IPC transport or launch with kernel manager-provisioned CurveZMQ keys to "
                    "enable transport encryption.")
