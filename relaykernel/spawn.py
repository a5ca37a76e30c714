"""The spawn contract between the supervisor and a worker, defined once.

What a worker is started with (:class:`WorkerConfig`, pickled to the child),
what the fork server imports before forking workers (:data:`PRELOAD`) and the
process target (:func:`run_worker`).  It belongs to neither side: the
supervisor imports it to start workers, the worker to read its configuration.
So it must not import IPython, nor anything of the supervisor or the worker, at
import time: the worker's modules are imported inside :func:`run_worker`, in
the child.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

#: What the worker imports before READY, for the fork server to import once
#: (supervisor/launcher.py).  Importing them starts no thread and touches no
#: stream: safe to fork after.
PRELOAD = (
    "relaykernel.worker.main",
    "relaykernel.worker.kernel",
    "relaykernel.worker.shell",
    "relaykernel.worker.compat",
    "relaykernel.comm",
    "IPython.extensions.storemagic",
)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, pickled to the spawn child."""

    key: bytes
    signature_scheme: str
    session_id: str
    connection_file: str
    crash_log: str
    endpoint: str = ""
    number: int = 0
    log_level: int = 30
    supervisor_pid: int = 0
    #: GLIBC_TUNABLES as the supervisor inherited it (None: unset); the worker
    #: starts with huge pages added and puts this back for the user's programs
    inherited_tunables: str | None = None
    #: where the worker counts the requests it begins (progress.py); "" for none
    progress_file: str = ""

    def with_endpoint(self, endpoint: str, number: int, progress_file: str = "") -> WorkerConfig:
        return dataclasses.replace(self, endpoint=endpoint, number=number, progress_file=progress_file,
                                   crash_log=os.path.join(os.path.dirname(self.crash_log), f"crash-{number}"))


def run_worker(config: WorkerConfig) -> None:
    """Process target: become a worker and serve until told to stop."""
    try:
        from .worker.main import serve

        serve(config)
    except BaseException:
        # The supervisor reads this file to tell the user why the worker died.
        import traceback

        fd = os.open(config.crash_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            traceback.print_exc(file=f)
        raise
