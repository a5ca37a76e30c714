"""``CommManager``: comm targets and open comms of the worker.

Extends the ``comm`` package's manager with what a kernel needs: a ``kernel``
attribute, tracebacks of failing callbacks printed to stderr (so they appear
as output of the request that triggered them, and the comm survives), the
spec's comm_close reply to an open for an unknown target, and telling the
supervisor which targets exist (it replays preserved comms to new targets).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

import comm as comm_package
from comm.base_comm import CommManager as BaseCommManager


class CommManager(BaseCommManager):
    def __init__(self, kernel: Any = None) -> None:
        super().__init__()
        self.kernel = kernel

    def register_target(self, target_name: str, f: Callable[..., Any] | str) -> None:
        """Call ``f(comm, open_msg)`` when the frontend opens a comm with this target."""
        super().register_target(target_name, f)
        if self.kernel is not None:
            self.kernel.target_changed(target_name, True)

    def unregister_target(self, target_name: str, f: Callable[..., Any] | None = None) -> Any:
        """Remove a target; returns its handler (None if there was none)."""
        handler = self.targets.pop(target_name, None)
        if self.kernel is not None and handler is not None:
            self.kernel.target_changed(target_name, False)
        return handler

    def comm_open(self, stream: Any, ident: Any, msg: dict[str, Any]) -> None:
        content = msg["content"]
        comm = comm_package.create_comm(comm_id=content["comm_id"], primary=False,
                                        target_name=content["target_name"],
                                        target_module=content.get("target_module"))
        self.register_comm(comm)
        handler = self.targets.get(content["target_name"])
        if handler is None:
            print(f"relaykernel: no comm target {content['target_name']!r} is registered; "
                  "closing the comm", file=sys.stderr)
        else:
            try:
                handler(comm, msg)
                return
            except Exception:
                _print_callback_error(f"opening comm with target {content['target_name']!r}")
        comm.close()

    def adopt(self, msg: dict[str, Any]) -> None:
        """Hand a comm that outlived its worker to its target's handler.

        Raises when the handler fails; the comm is then forgotten here but not
        closed, so the frontend keeps it."""
        content = msg["content"]
        comm = comm_package.create_comm(comm_id=content["comm_id"], primary=False,
                                        target_name=content["target_name"],
                                        target_module=content.get("target_module"))
        self.register_comm(comm)
        try:
            self.targets[content["target_name"]](comm, msg)
        except BaseException:
            self.comms.pop(comm.comm_id, None)
            comm._closed = True  # never send comm_close for it
            raise

    def comm_msg(self, stream: Any, ident: Any, msg: dict[str, Any]) -> None:
        comm_id = msg["content"].get("comm_id")
        comm = self.comms.get(comm_id)
        if comm is None:
            print(f"relaykernel: comm_msg for unknown comm {comm_id!r} ignored", file=sys.__stderr__)
            return
        try:
            comm.handle_msg(msg)
        except Exception:
            _print_callback_error(f"the message callback of comm {comm_id}")

    def comm_close(self, stream: Any, ident: Any, msg: dict[str, Any]) -> None:
        comm_id = msg["content"].get("comm_id")
        comm = self.comms.pop(comm_id, None)
        if comm is None:
            return
        comm._closed = True
        try:
            comm.handle_close(msg)
        except Exception:
            _print_callback_error(f"the close callback of comm {comm_id}")


def _print_callback_error(where: str) -> None:
    print(f"Exception in {where}:", file=sys.stderr)
    traceback.print_exc(file=sys.stderr)
