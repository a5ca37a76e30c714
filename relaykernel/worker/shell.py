"""The IPython shell of the worker and its output hooks.

Runs in the worker's main thread.  Results, displays and tracebacks become
Jupyter messages through the :class:`~relaykernel.worker.messages.Messenger`.
"""

from __future__ import annotations

import logging
import pdb  # noqa: T100 - made interruptible below
import sys
import types
from typing import Any

from IPython.core import page, payloadpage
from IPython.core.application import BaseIPythonApplication, base_aliases, base_flags
from IPython.core.autocall import ExitAutocall
from IPython.core.compilerop import CachingCompiler
from IPython.core.debugger import InterruptiblePdb
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell, InteractiveShellABC
from IPython.core.profiledir import ProfileDir
from IPython.core.shellapp import InteractiveShellApp, shell_aliases, shell_flags
from traitlets import Any as AnyTrait
from traitlets import Dict, Instance, List, Type, default
from traitlets.config import Config

from . import cell_names


class CellCompiler(CachingCompiler):
    """Compiles each cell under a file name made from its source (cell_names.py),
    as ipykernel does: tracebacks show the cell's whole layout, and a debugger
    frontend can compute the name of a cell's file."""

    def get_code_name(self, raw_code: str, transformed_code: str, number: int) -> str:
        return cell_names.cell_file_name(raw_code)


class KernelPdb(InterruptiblePdb):
    """The worker's pdb: an interrupt at its prompt ends the session *and the cell*.

    Stdlib pdb catches KeyboardInterrupt at its prompt and prompts again, so an
    interrupt could not end a cell stopped in ``breakpoint()``: the grace period
    ran out and the worker, with every variable, was replaced.  IPython's
    InterruptiblePdb ends the session, but IPython 9's ``Pdb.interaction`` then
    swallows the KeyboardInterrupt and the rest of the cell runs on (what
    ipykernel 7 does); here it reaches the cell, which fails with it, as an
    interrupt of a cell anywhere else does.
    """

    _interrupted = False

    def cmdloop(self, intro: str | None = None) -> None:
        try:
            super().cmdloop(intro)
        except KeyboardInterrupt:  # InterruptiblePdb has ended the session
            self._interrupted = True
            raise

    def interaction(self, frame: Any, tb_or_exc: Any) -> None:
        self._interrupted = False
        super().interaction(frame, tb_or_exc)
        if self._interrupted:
            interrupt = KeyboardInterrupt()
            # shown as the cell's frames down to where the debugger stopped
            interrupt._render_traceback_ = lambda: _traceback_to(interrupt, frame)
            raise interrupt


class OutputParent:
    """ipykernel's display publisher and display hook each keep a parent header
    that libraries may read or set; here one parent (the Messenger's, per asyncio
    context and thread) serves all output, so these read and set that one."""

    def _messenger(self) -> Any:
        return self.shell.kernel.messenger

    @property
    def parent_header(self) -> dict[str, Any]:
        return self._messenger().current().header  # type: ignore[no-any-return]

    def set_parent(self, parent: dict[str, Any]) -> None:
        self._messenger().set_parent(parent)

    def set_thread_parent(self, parent: dict[str, Any]) -> Any:
        return self._messenger().set_thread_parent(parent)

    def reset_thread_parent(self, token: Any) -> None:
        self._messenger().reset_thread_parent(token)


class RelayDisplayPublisher(OutputParent, DisplayPublisher):
    """display() -> display_data / update_display_data / clear_output."""

    shell = Instance(InteractiveShellABC, allow_none=True)

    def publish(self, data: dict[str, Any], metadata: dict[str, Any] | None = None, source: Any = None,
                *, transient: dict[str, Any] | None = None, update: bool = False, **kwargs: Any) -> None:
        kernel = self.shell.kernel
        kernel.flush_streams()
        content = {"data": data, "metadata": metadata or {}, "transient": transient or {}}
        kernel.messenger.publish("update_display_data" if update else "display_data", content)

    def clear_output(self, wait: bool = False) -> None:
        kernel = self.shell.kernel
        kernel.flush_streams()
        kernel.messenger.publish("clear_output", {"wait": wait})


class RelayDisplayHook(OutputParent, DisplayHook):
    """The value of a cell's last expression -> execute_result."""

    #: between start and finish: a traceback shown now is a formatting error of the result
    formatting = False

    def start_displayhook(self) -> None:
        self.formatting = True
        self._result: dict[str, Any] = {"execution_count": self.prompt_count, "data": {}, "metadata": {}}

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None) -> None:
        self._result["data"] = format_dict
        self._result["metadata"] = md_dict or {}

    def finish_displayhook(self) -> None:
        kernel = self.shell.kernel
        kernel.flush_streams()
        if self._result["data"]:
            kernel.messenger.publish("execute_result", self._result)
        self._result = {}
        self.formatting = False


class RelayExitAutocall(ExitAutocall):
    """``exit`` / ``exit(keep_kernel=True)``: ask the frontend to close, like ipykernel."""

    def __call__(self, keep_kernel: bool = False) -> None:
        self._ip.keepkernel_on_exit = keep_kernel
        self._ip.ask_exit()


class ZMQInteractiveShell(InteractiveShell):
    """InteractiveShell whose outputs go to the frontend through the supervisor.

    Named like ipykernel's shell on purpose: libraries decide "this is a
    notebook, send HTML and widgets" from ``type(get_ipython()).__name__ ==
    "ZMQInteractiveShell"`` (rich, plotly and countless snippets) or from
    "zmq" in its type's name (pandas), and users' ``c.ZMQInteractiveShell``
    settings apply here as they would under ipykernel.
    """

    @default("exiter")
    def _exiter_default(self) -> RelayExitAutocall:
        return RelayExitAutocall(self)

    compiler_class = Type(CellCompiler)
    displayhook_class = Type(RelayDisplayHook)
    display_pub_class = Type(RelayDisplayPublisher)
    kernel = AnyTrait(help="The worker kernel (relaykernel.worker.kernel.WorkerKernel).")

    def init_instance_attrs(self) -> None:
        super().init_instance_attrs()
        # tqdm, and others, ask whether an IPKernelApp configured the shell
        self.config.setdefault("IPKernelApp", Config())

    def get_parent(self) -> dict[str, Any]:
        """The request the calling context answers, as ipykernel's shell offers it."""
        return self.kernel.get_parent() if self.kernel is not None else {}

    @property
    def parent_header(self) -> dict[str, Any]:
        return self.get_parent()

    # One parent serves streams, displays, results and comms (the Messenger's, per
    # asyncio context and thread), so these set it for all of them at once.
    def set_parent(self, parent: dict[str, Any]) -> None:
        """Outputs of the calling context (and tasks and threads it starts) answer ``parent``."""
        self.kernel.messenger.set_parent(parent)

    def set_thread_parent(self, parent: dict[str, Any]) -> Any:
        """Outputs of the calling context only answer ``parent``; returns a token
        for :meth:`reset_thread_parent`."""
        return self.kernel.messenger.set_thread_parent(parent)

    def reset_thread_parent(self, token: Any) -> None:
        self.kernel.messenger.reset_thread_parent(token)

    def init_environment(self) -> None:
        import os

        env = os.environ
        env["TERM"] = "xterm-color"
        env["CLICOLOR"] = "1"
        env["PAGER"] = "cat"
        env["GIT_PAGER"] = "cat"
        env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    def init_magics(self) -> None:
        super().init_magics()
        from .magics import RelayMagics

        self.register_magics(RelayMagics)

    @property
    def debugger_cls(self) -> type[KernelPdb]:  # %debug, %pdb
        return KernelPdb

    def init_pdb(self) -> None:
        super().init_pdb()
        # pdb.set_trace(), breakpoint() (sys.breakpointhook calls pdb.set_trace) and
        # pdb.run / pdb.post_mortem use the interruptible debugger, as under ipykernel
        pdb.Pdb = KernelPdb  # type: ignore[misc, assignment]
        pdb.set_trace = _set_trace

    def init_hooks(self) -> None:
        super().init_hooks()
        # `?obj`, %pdoc and friends page into a payload, as Jupyter frontends expect
        self.set_hook("show_in_pager", page.as_hook(payloadpage.page), 99)

    def _showtraceback(self, etype: Any, evalue: Any, stb: list[str]) -> None:
        kernel = self.kernel
        kernel.flush_streams()
        error = {"ename": getattr(etype, "__name__", str(etype)), "evalue": str(evalue), "traceback": stb}
        kernel.last_error = error
        if getattr(self.displayhook, "formatting", False):
            # the cell's result could not be formatted: the cell fails, as under ipykernel
            self.displayhook_failed = True
        kernel.messenger.publish("error", error)

    def set_next_input(self, text: str, replace: bool = False) -> None:
        self.payload_manager.write_payload({"source": "set_next_input", "text": text, "replace": replace})

    def ask_exit(self) -> None:
        self.exit_now = True
        self.payload_manager.write_payload({"source": "ask_exit", "keepkernel": self.keepkernel_on_exit})

    keepkernel_on_exit = False
    #: an error was shown while formatting the running cell's result (reset per cell)
    displayhook_failed = False

    #: GUIs that need no event loop of their own: the frontend draws them
    #: (matplotlib's inline, nbagg/notebook, webagg, ipympl/widget), or they run
    #: on the worker's asyncio loop, which is always running.
    NO_LOOP_GUIS = frozenset({"inline", "nbagg", "notebook", "webagg", "ipympl", "widget", "asyncio"})

    def enable_gui(self, gui: str | None = None) -> None:
        if gui is not None and gui not in self.NO_LOOP_GUIS:
            raise NotImplementedError(f"relaykernel has no event loop integration for GUI {gui!r}")


class ShellApp(BaseIPythonApplication, InteractiveShellApp):
    """The worker's IPython configuration, found where ipykernel finds it: the
    kernel's IPython options (spawn.ipython_args), the profile (``--profile``,
    ``--profile-dir``, ``--ipython-dir``), its ``ipython_config.py`` and
    ``ipython_kernel_config.py``; then, once the shell exists, its extensions,
    matplotlib/gui setting, startup files, ``exec_lines``, ``exec_files``, ``-c``
    and ``-m``.  Every worker, spawned or forked, builds its own from the same
    options, so a replacement worker is configured as the first one was."""

    name = "ipython-kernel"  # so the config file is ipython_kernel_config.py, as ipykernel's
    aliases = Dict({**base_aliases, **shell_aliases})
    flags = Dict({**base_flags, **shell_flags})
    classes = List([InteractiveShell, ProfileDir])  # type: ignore[assignment]

    def init_crash_handler(self) -> None:
        """No IPython crash handler: the worker reports its own deaths (spawn.run_worker)."""

    @classmethod
    def configured(cls, args: tuple[str, ...], log: logging.Logger) -> ShellApp:
        app = cls(log=log)
        app.initialize(list(args))
        return app

    def make_shell(self, kernel: Any) -> ZMQInteractiveShell:
        shell = ZMQInteractiveShell.instance(parent=self, profile_dir=self.profile_dir,
                                             ipython_dir=self.ipython_dir, kernel=kernel)
        self.shell = shell
        return shell

    def start_shell(self) -> None:
        """What IPython runs once the shell exists.  A failure is shown (as a traceback
        on stderr) and the worker goes on, as ipykernel does."""
        self.init_extensions()  # storemagic, which IPython's apps load by default, and c.*.extensions
        self.init_gui_pylab()
        self.init_code()


def _traceback_to(error: BaseException, frame: Any) -> list[str]:
    """``error``'s traceback as IPython shows a cell's: from the cell down to ``frame``
    (the frame the debugger stopped in; a trace function's exception has no frame
    of the user's in its own traceback, only bdb's)."""
    frames = []
    caller = frame
    while caller is not None and caller.f_code is not _RUN_CODE:
        frames.append(caller)
        caller = caller.f_back
    if caller is None:  # not under run_code (a thread, a comm callback): where it stopped
        frames = frames[:1]
    tb = None
    for f in frames:  # innermost first: each wraps the ones it called
        tb = types.TracebackType(tb, f, f.f_lasti, f.f_lineno)
    shell = InteractiveShell.instance()
    return list(shell.InteractiveTB.structured_traceback(type(error), error, tb))


#: the code of IPython's run_code, whose frame calls every cell's
_RUN_CODE = InteractiveShell.run_code.__code__


def _set_trace(frame: Any = None, *, header: str | None = None) -> None:
    """``pdb.set_trace()`` in the worker: :class:`KernelPdb`, stopping in the caller."""
    debugger = KernelPdb()
    if header is not None:
        debugger.message(header)
    debugger.set_trace(frame or sys._getframe().f_back)


InteractiveShellABC.register(ZMQInteractiveShell)
