"""``Comm``: one end of a bidirectional channel to the frontend."""

from __future__ import annotations

from typing import Any

import comm as comm_package
from comm.base_comm import BaseComm


class Comm(BaseComm):
    """A comm opened by (primary) or for (not primary) the kernel.

    ``Comm(target_name=None, data=None, metadata=None, buffers=None, **kwargs)``:
    creating a primary comm sends ``comm_open`` to the frontend at once.
    """

    def __init__(self, target_name: str | None = None, data: Any = None, metadata: Any = None,
                 buffers: Any = None, **kwargs: Any) -> None:
        manager = comm_package.get_comm_manager()
        kernel = kwargs.pop("kernel", None) or getattr(manager, "kernel", None)
        if kernel is None:
            raise RuntimeError("relaykernel.comm.Comm needs a running relaykernel worker")
        self.kernel: Any = kernel
        super().__init__(target_name=target_name or "comm", data=data, metadata=metadata,
                         buffers=buffers, **kwargs)

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None,
                    **keys: Any) -> None:
        content = {"data": {} if data is None else data, "comm_id": self.comm_id, **keys}
        if content.get("target_module", "") is None:
            del content["target_module"]
        self.kernel.send_comm(msg_type, content, metadata or {}, buffers)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<relaykernel Comm {self.comm_id} target={self.target_name!r} {state}>"
