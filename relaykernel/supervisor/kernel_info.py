"""The kernel_info_reply, built without importing IPython.

The supervisor answers kernel_info itself so a frontend connects before the
worker has finished importing IPython.  Answered within ~0.1 s of launch, so
it is built from constants: no package-metadata lookups (importlib.metadata
alone costs ~15 ms to import).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from typing import Any

from .. import __version__
from ..signing import JUPYTER_PROTOCOL_VERSION


@functools.cache  # built once: nothing in it changes while we run
def kernel_info_content() -> dict[str, Any]:
    py = ".".join(map(str, sys.version_info[:3]))
    return {
        "status": "ok",
        "protocol_version": JUPYTER_PROTOCOL_VERSION,
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
            f"Python {sys.version.split()[0]} | relaykernel {__version__} | IPython kernel\n"
            "Crash-resilient: if the worker process dies, a fresh one takes over.\n"
        ),
        "help_links": [
            {"text": "Python Reference", "url": f"https://docs.python.org/{sys.version_info[0]}.{sys.version_info[1]}"},
            {"text": "IPython Reference", "url": "https://ipython.org/documentation.html"},
            {"text": "Jupyter messaging", "url": "https://jupyter-client.readthedocs.io/en/stable/messaging.html"},
        ],
        "debugger": _has_debugpy(),
        # the optional features this kernel has (protocol 5.4; subshells: 5.5, JEP 91)
        "supported_features": ["kernel subshells", *(["debugger"] if _has_debugpy() else [])],
    }


def _has_debugpy() -> bool:
    """The worker's debugger (worker/debugger.py) runs debugpy: without it, no debugger."""
    return importlib.util.find_spec("debugpy") is not None
