"""relaykernel: a crash-resilient IPython kernel for Jupyter.

A small supervisor process owns the Jupyter sockets, message signing, the
execution queue and the registry of open comms; user code runs in a worker
subprocess that can die and be replaced without the frontend losing its
kernel, its comms or its widgets.
"""

from __future__ import annotations

import json
import os
from typing import Any

__version__ = "0.1.0"

#: Set in the worker's environment: the kernel's connection file.
CONNECTION_FILE_ENV = "RELAYKERNEL_CONNECTION_FILE"


def get_connection_file() -> str:
    """Path of the running kernel's connection file (call it from a cell)."""
    path = os.environ.get(CONNECTION_FILE_ENV)
    if not path:
        raise RuntimeError("not running inside a relaykernel worker")
    return path


def get_connection_info(unpack: bool = False) -> str | dict[str, Any]:
    """The running kernel's connection info, as JSON text or (unpack=True) a dict."""
    with open(get_connection_file()) as f:
        info = json.load(f)
    return info if unpack else json.dumps(info, indent=2)
