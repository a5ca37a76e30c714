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
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any


def _installed_package_first() -> None:
    """Make ``relaykernel`` the installed package if a folder of the working
    directory shadows it.

    A folder named relaykernel where the kernel starts (a clone of the project,
    when Jupyter runs from the folder above it) is found on ``''``, first on
    ``sys.path``, as a namespace package before an editable install's finder is
    asked: its modules then load, but ``from .. import`` finds nothing.  The
    kernelspec's command line drops ``''`` before importing (kernelspec.py); the
    fork server's we do not choose (``python -c``, and multiprocess ignores the
    parent's ``sys.path`` there), so this runs on its first import of relaykernel
    (:data:`PRELOAD` starts here).  Forked workers put ``''`` back for user code
    (worker/main.py), as spawned ones do."""
    package = sys.modules.get(__package__ or "")
    if package is None or getattr(package, "__file__", None) is not None:
        return  # the installed package: nothing shadows it
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != cwd]
    for name in [n for n in sys.modules if n.startswith(f"{__package__}.") and n != __name__]:
        del sys.modules[name]
    del sys.modules[package.__name__]
    real = importlib.import_module(package.__name__)
    setattr(real, __name__.rpartition(".")[2], sys.modules[__name__])


_installed_package_first()


def _freeze_before_forks() -> None:
    """In the fork server: move every object it holds to the collector's permanent
    generation before each fork (``gc.freeze``).  A worker's full collections then
    skip the objects it inherited, instead of writing to each one (and so copying
    the server's heap into the worker, which leaves the server's copy unshared:
    without a standby, the server's own memory grew 6.8 MB when a cell imported
    pandas, 3.9 MB with this).  Only in the server: in a worker it would keep
    cyclic garbage from being collected."""
    import gc

    server = os.getpid()
    os.register_at_fork(before=lambda: gc.freeze() if os.getpid() == server else None)


if "multiprocess.forkserver" in " ".join(getattr(sys, "orig_argv", ())):
    _freeze_before_forks()

#: What the worker imports before READY, for the fork server to import once
#: (supervisor/launcher.py).  Importing them starts no thread and touches no
#: stream: safe to fork after.  This module comes first: it repairs a shadowed
#: package before the others import from it.  The last ones are what building
#: the shell imports: imported in the server, every forked worker shares them
#: rather than holding a copy (the standby's own memory went 12.6 -> 11.3 MB,
#: the server's 11.9 -> 10.9: benchmarks/README.md, "Memory per kernel").
PRELOAD = (
    "relaykernel.spawn",
    "relaykernel.worker.main",
    "relaykernel.worker.kernel",
    "relaykernel.worker.shell",
    "relaykernel.worker.compat",
    "relaykernel.worker.magics",
    "relaykernel.comm",
    "IPython.extensions.storemagic",
    "IPython.core.magics",
    "IPython.core.oinspect",
    "IPython.core.completerlib",
    "IPython.core.logger",
    "sqlite3",
    "unicodedata",
)

#: The kernel's command-line options that configure IPython, as ipykernel takes
#: them (its IPKernelApp is an IPython application).  The supervisor accepts
#: them and hands them on (:func:`ipython_args`); the worker's shell applies them.
IPYTHON_ALIASES = {
    "profile": "BaseIPythonApplication.profile",
    "profile-dir": "ProfileDir.location",
    "ipython-dir": "BaseIPythonApplication.ipython_dir",
    "config": "BaseIPythonApplication.extra_config_file",
    "ext": "InteractiveShellApp.extra_extensions",
    "c": "InteractiveShellApp.code_to_run",
    "m": "InteractiveShellApp.module_to_run",
    "gui": "InteractiveShellApp.gui",
    "pylab": "InteractiveShellApp.pylab",
    "matplotlib": "InteractiveShellApp.matplotlib",
    "autocall": "InteractiveShell.autocall",
    "colors": "InteractiveShell.colors",
    "logfile": "InteractiveShell.logfile",
    "logappend": "InteractiveShell.logappend",
    "cache-size": "InteractiveShell.cache_size",
}


def _switch(name: str, trait: str) -> dict[str, tuple[dict[str, dict[str, bool]], str]]:
    cls, attr = trait.split(".")
    return {name: ({cls: {attr: True}}, f"{trait} = True"),
            f"no-{name}": ({cls: {attr: False}}, f"{trait} = False")}


IPYTHON_FLAGS: dict[str, tuple[dict[str, dict[str, Any]], str]] = {
    "pylab": ({"InteractiveShellApp": {"pylab": "auto"}}, "Load matplotlib and numpy (pylab)."),
    "matplotlib": ({"InteractiveShellApp": {"matplotlib": "auto"}}, "Set up matplotlib."),
    "nosep": ({"InteractiveShell": {"separate_in": "", "separate_out": "", "separate_out2": ""}},
              "No spacing between prompts."),
    **_switch("autoindent", "InteractiveShell.autoindent"),
    **_switch("automagic", "InteractiveShell.automagic"),
    **_switch("pdb", "InteractiveShell.pdb"),
    **_switch("pprint", "PlainTextFormatter.pprint"),
    **_switch("color-info", "InteractiveShell.color_info"),
}

#: Configurable classes of the supervisor: their ``--Class.trait`` options stay there.
SUPERVISOR_CLASSES = frozenset({"Supervisor", "Application"})


def ipython_args(argv: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The part of the kernel's command line meant for the worker's IPython: the
    options of :data:`IPYTHON_ALIASES` and :data:`IPYTHON_FLAGS` and every
    ``--Class.trait`` option of another class than the supervisor's
    (``--HistoryManager.hist_file=:memory:``), each with its value."""
    kept: list[str] = []
    i = 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if not arg.startswith("-"):
            continue
        name, eq, _ = arg.lstrip("-").partition("=")
        value_follows = not eq and i < len(argv) and not argv[i].startswith("-")
        if name in IPYTHON_FLAGS and not (value_follows and name in IPYTHON_ALIASES):
            kept.append(arg)
        elif name in IPYTHON_ALIASES or ("." in name and name.split(".")[0] not in SUPERVISOR_CLASSES):
            kept.extend(argv[i - 1 : i + 1] if value_follows else [arg])
            i += value_follows
        elif value_follows:  # a supervisor option's value
            i += 1
    return tuple(kept)


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
    #: the kernel's IPython options (:func:`ipython_args`): the worker builds its
    #: shell from them, its profile and its config files, as ipykernel does
    ipython_args: tuple[str, ...] = ()
    #: take snapshots to roll back to after a crash (Supervisor.snapshots; the
    #: first worker starts before the config is read: ACTIVATE has the last word)
    snapshots: bool = True
    #: bytes: no snapshot of a worker with more resident memory (Supervisor.snapshot_max_memory); 0: no limit
    snapshot_max_memory: int = 0
    #: what snapshots may cost, as a share of the cells' time and of the session's
    #: (Supervisor.snapshot_cost_share; worker/snapshot.py, _back_off)
    snapshot_cost_share: float = 0.025
    #: the supervisor turned transparent huge pages off for itself (heap.py), which
    #: its children inherit: the worker turns them back on
    allow_huge_pages: bool = False

    def for_template(self, private_dir: str, serial: int) -> WorkerConfig:
        """The config of the ``serial``-th worker template (worker/template.py): its link
        in ``private_dir``, no number, no progress file.  The supervisor's early step
        (which forks the first template) and the launcher (which binds its link) agree
        on it through here."""
        return dataclasses.replace(self, endpoint=f"ipc://{private_dir}/template-{serial}", number=0,
                                   progress_file="",
                                   crash_log=os.path.join(private_dir, f"template-{serial}.crash"))

    def with_endpoint(self, endpoint: str, number: int, progress_file: str = "") -> WorkerConfig:
        return dataclasses.replace(self, endpoint=endpoint, number=number, progress_file=progress_file,
                                   crash_log=os.path.join(os.path.dirname(self.crash_log), f"crash-{number}"))


def _forget_resource_tracker() -> None:
    """Drop the ``/dev/null`` the supervisor passes as ``multiprocess``'s resource
    tracker (supervisor/launcher.py: ``without_resource_tracker``), so that user code
    using ``multiprocess`` starts a real tracker of its own when it first needs one."""
    tracker = sys.modules.get("multiprocess.resource_tracker")
    fd = getattr(getattr(tracker, "_resource_tracker", None), "_fd", None)
    if tracker is None or fd is None:
        return
    try:
        if os.fstat(fd).st_rdev != os.stat(os.devnull).st_rdev:
            return  # a real tracker's pipe (another parent than relaykernel's supervisor)
        os.close(fd)
    except OSError:
        pass
    tracker._resource_tracker._fd = None


def run_worker(config: WorkerConfig, template: bool = False) -> None:
    """Process target: become a worker and serve until told to stop (``template``:
    the worker template, worker/template.py, whose forked children become workers)."""
    try:
        _forget_resource_tracker()
        if config.allow_huge_pages:
            from .heap import allow_huge_pages

            allow_huge_pages(True)
        from .worker.main import serve

        serve(config, template)
    except BaseException:
        # The supervisor reads this file to tell the user why the worker died.
        import traceback

        fd = os.open(config.crash_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            traceback.print_exc(file=f)
        raise
