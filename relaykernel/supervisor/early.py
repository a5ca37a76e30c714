"""Start the first worker before the supervisor's heavier imports.

A frontend waits for the kernel's first result, and most of that wait is the
worker importing IPython.  Launching the worker first thing (zmq and
multiprocess are all it needs) lets that import run while the supervisor
imports jupyter_client and traitlets and binds its sockets, on another core.

Reads only what the worker needs from the command line (the connection file,
for its key) and decides what the supervisor will use too: the session id,
the private link directory, the connection file's path.  Runs in the
supervisor's main thread, before the Application exists.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass

import zmq

from ..worker.entry import WorkerConfig
from .worker_process import WorkerProcess

_CONNECTION_FILE_FLAGS = ("-f", "--f", "--Supervisor.connection_file")


@dataclass
class EarlyStart:
    """What the early step decided, handed to the Application."""

    key: bytes
    signature_scheme: str
    session_id: str
    private_dir: str
    connection_file: str  # absolute; may not exist yet (the app then writes it)
    worker: WorkerProcess


def connection_file_arg(args: list[str]) -> str:
    """The connection file named on the command line, or ''."""
    for i, arg in enumerate(args):
        for flag in _CONNECTION_FILE_FLAGS:
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
    return ""


def begin(args: list[str]) -> EarlyStart:
    path = connection_file_arg(args)
    info = {}
    if path and os.path.exists(path):
        with open(path) as f:
            info = json.load(f)
    if not path:
        from jupyter_core.paths import jupyter_runtime_dir

        path = os.path.join(jupyter_runtime_dir(), f"kernel-{uuid.uuid4()}.json")
    key = info.get("key") or str(uuid.uuid4())
    early = EarlyStart(
        key=key.encode() if isinstance(key, str) else key,
        signature_scheme=info.get("signature_scheme", "hmac-sha256"),
        session_id=str(uuid.uuid4()),
        private_dir=tempfile.mkdtemp(prefix="relaykernel-"),  # 0700: the link stays ours
        connection_file=os.path.abspath(path),
        worker=None,  # type: ignore[arg-type]
    )
    config = WorkerConfig(
        key=early.key, signature_scheme=early.signature_scheme, session_id=early.session_id,
        connection_file=early.connection_file, crash_log=os.path.join(early.private_dir, "crash"),
        log_level=logging.DEBUG if "--debug" in args else logging.WARNING, supervisor_pid=os.getpid())
    early.worker = WorkerProcess(zmq.Context.instance(), 1, early.private_dir, config)
    return early
