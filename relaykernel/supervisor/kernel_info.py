"""The kernel_info_reply, built without importing IPython.

The supervisor answers kernel_info itself so a frontend connects before the
worker has finished importing IPython; versions come from package metadata.
"""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Any

from .. import __version__

PROTOCOL_VERSION = "5.4"


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def kernel_info_content() -> dict[str, Any]:
    py = ".".join(map(str, sys.version_info[:3]))
    ipython = _dist_version("ipython")
    return {
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "implementation": "relaykernel",
        "implementation_version": __version__,
        "language_info": {
            "name": "python",
            "version": py,
            "mimetype": "text/x-python",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "pygments_lexer": "ipython3",
            "nbconvert_exporter": "python",
            "file_extension": ".py",
        },
        "banner": (
            f"Python {sys.version.split()[0]} | relaykernel {__version__} | IPython {ipython}\n"
            "Crash-resilient: if the worker process dies, a fresh one takes over.\n"
        ),
        "help_links": [
            {"text": "Python Reference", "url": f"https://docs.python.org/{sys.version_info[0]}.{sys.version_info[1]}"},
            {"text": "IPython Reference", "url": "https://ipython.org/documentation.html"},
            {"text": "Jupyter messaging", "url": "https://jupyter-client.readthedocs.io/en/stable/messaging.html"},
        ],
        "debugger": False,
    }
