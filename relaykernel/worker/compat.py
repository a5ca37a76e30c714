"""Make the worker look like a Jupyter kernel to libraries that ask ipykernel.

Libraries detect "running in a notebook" by looking for ipykernel: tqdm.auto
checks ``'ipykernel.zmqshell' in sys.modules``, others ask
``isinstance(get_ipython(), ipykernel.zmqshell.ZMQInteractiveShell)``, and
ipykernel's documentation teaches ``from ipykernel.comm import Comm``.  This
module answers those questions for relaykernel: ``ipykernel.zmqshell`` names
the relaykernel shell class and ``ipykernel.comm`` is relaykernel's comm
module.  Installed once in the worker, only for names nobody imported yet.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def install(shell_class: type[Any]) -> None:
    if "ipykernel.zmqshell" not in sys.modules:
        zmqshell = types.ModuleType("ipykernel.zmqshell", __doc__)
        zmqshell.ZMQInteractiveShell = shell_class  # type: ignore[attr-defined]
        sys.modules["ipykernel.zmqshell"] = zmqshell
    if "ipykernel.comm" not in sys.modules:
        from .. import comm

        sys.modules["ipykernel.comm"] = comm
