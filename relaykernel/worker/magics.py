"""IPython magics a Jupyter kernel offers beyond IPython's own.

The ones ipykernel users rely on: ``%connect_info``, ``%clear``, ``%less``,
``%more``, ``%man``, ``%qtconsole``, ``%autosave`` (which asks the notebook
frontend, in JavaScript, to change its autosave interval) and ``%subshell``; and
relaykernel's own ``%snapshot`` (snapshot.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import warnings
from typing import Any

from IPython.core import page
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import Javascript, clear_output, display


@magics_class
class RelayMagics(Magics):
    """Magics registered by :class:`~relaykernel.worker.shell.ZMQInteractiveShell`."""

    @line_magic
    def connect_info(self, arg_s: str = "") -> None:
        """Print the kernel's connection info and how to attach another frontend.

        Usage: ``%connect_info``
        """
        from jupyter_core.paths import jupyter_runtime_dir

        from .. import get_connection_file

        try:
            connection_file = get_connection_file()
            with open(connection_file) as f:
                info = json.load(f)
        except Exception as e:  # noqa: BLE001 - report, don't raise, like ipykernel
            print(f"Could not get connection info: {e}")
            return

        # The short form works when the file lives in the default runtime dir.
        existing = connection_file
        if os.path.dirname(os.path.abspath(connection_file)) == os.path.abspath(jupyter_runtime_dir()):
            existing = os.path.basename(connection_file)

        print(json.dumps(info, indent=2))
        print(
            "\nPaste the above JSON into a file, and connect with:\n"
            "    $> jupyter <app> --existing <file>\n"
            "or, if you are local, you can connect with just:\n"
            f"    $> jupyter <app> --existing {existing}\n"
            "or even just:\n"
            "    $> jupyter <app> --existing\n"
            "if this is the most recent Jupyter kernel you have started.\n"
            f"For example:\n    $> jupyter console --existing {connection_file}"
        )

    @line_magic
    def clear(self, arg_s: str = "") -> None:
        """Clear the cell's output area.  Usage: ``%clear``"""
        clear_output()

    @line_magic
    def less(self, arg_s: str) -> None:
        """Show a file in the pager.  Usage: ``%less FILE``"""
        _page_file(self.shell, arg_s)

    @line_magic
    def more(self, arg_s: str) -> None:
        """Show a file in the pager.  Usage: ``%more FILE``"""
        _page_file(self.shell, arg_s)

    @line_magic
    def man(self, arg_s: str) -> None:
        """Show a man page in the pager.  Usage: ``%man PAGE``"""
        shell: Any = self.shell
        page.page(shell.getoutput(f"man {arg_s} | col -b", split=False))

    @line_magic
    def qtconsole(self, arg_s: str = "") -> None:
        """Open a Qt console attached to this kernel (when qtconsole is installed).

        Usage: ``%qtconsole [qtconsole options]``.  Like ipykernel, quiet when
        the console cannot start: a notebook that says ``%qtconsole`` still runs
        where there is no qtconsole or no display.
        """
        from IPython.utils.process import arg_split  # type: ignore[attr-defined]  # re-exported, not declared

        from .. import get_connection_file

        if importlib.util.find_spec("qtconsole") is None:
            return
        try:
            # its own session: an interrupt of the kernel must not reach the console
            subprocess.Popen([sys.executable, "-m", "qtconsole", "--existing", get_connection_file(),
                              *arg_split(arg_s, posix=os.name == "posix")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        except Exception as e:  # noqa: BLE001 - a warning, not an error, like ipykernel
            warnings.warn(f"Could not start qtconsole: {e!r}", stacklevel=2)

    @line_magic
    def autosave(self, arg_s: str) -> None:
        """Set the notebook's autosave interval in seconds (0 turns it off).  Usage: ``%autosave N``"""
        try:
            interval = int(arg_s)
        except ValueError as e:
            raise UsageError(f"%autosave requires an integer, got {arg_s!r}") from e
        display(Javascript(f"IPython.notebook.set_autosave_interval({interval * 1000})"))
        print(f"Autosaving every {interval} seconds" if interval else "Autosave disabled")

    @line_magic
    def snapshot(self, arg_s: str = "") -> None:
        """Show the state of the worker's snapshots, or turn them on or off for the session.

        Usage: ``%snapshot`` (is one kept, of which cell, how old, or why none is),
        ``%snapshot off``, ``%snapshot on``, ``%snapshot now`` (one is taken once this
        cell is done, however soon after the last: before a cell you expect trouble
        from).  A snapshot is a copy-on-write fork of the idle worker: after a crash the
        session rolls back to it.
        """
        from . import snapshot

        snapshots = snapshot.current
        if snapshots is None:
            print("Snapshots are not available in this process.")
            return
        arg = arg_s.strip().lower()
        if arg in ("on", "off"):
            print(snapshots.set_by_user(arg == "on"))
        elif arg == "now":
            print(snapshots.take_now())
        elif arg:
            raise UsageError(f"%snapshot takes 'on', 'off', 'now' or nothing, not {arg_s.strip()!r}")
        else:
            print(snapshots.status())

    @line_magic
    def subshell(self, arg_s: str = "") -> None:
        """Show the subshell this code runs in and the kernel's subshells (JEP 91), as
        ipykernel's ``%subshell`` does; the main shell's id is None.

        Usage: ``%subshell``
        """
        from .subshells import current

        kernel = getattr(self.shell, "kernel", None)
        running = current()
        print(f"subshell id: {running.id if running is not None else None}")
        print(f"thread id: {threading.get_ident()}")
        print(f"main thread id: {threading.main_thread().ident}")
        print(f"pid: {os.getpid()}")
        print(f"thread count: {threading.active_count()}")
        print(f"subshell list: {list(kernel.subshells.ids) if kernel is not None else []}")


def _page_file(shell: Any, path: str) -> None:
    if not path:
        raise UsageError("Missing filename.")
    with open(path) as f:
        text = f.read()
    page.page(shell.pycolorize(text) if path.endswith(".py") else text)
