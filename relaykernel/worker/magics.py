"""IPython magics specific to relaykernel's worker."""

from __future__ import annotations

import json
import os

from IPython.core.magic import Magics, line_magic, magics_class


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
