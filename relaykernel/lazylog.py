"""Loggers for the modules the supervisor runs before it can answer kernel_info.

``import logging`` costs ~6 ms (it loads traceback, linecache and tokenize),
and the early step (supervisor/early.py) must bind and answer a frontend
within tens of milliseconds of launch.  These modules log only when something
goes wrong, so they import logging then: a ``LazyLogger`` looks the real
logger up on each call.  Not for code that logs on a hot path.
"""

from __future__ import annotations

from typing import Any


class LazyLogger:
    """``logging.getLogger(name)``, imported and looked up when first called."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import logging

        return getattr(logging.getLogger(self._name), attr)
