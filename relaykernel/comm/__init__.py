"""The Communication Framework inside the worker: ``Comm`` and ``CommManager``.

Same names, signatures and behaviour as ipykernel's ``ipykernel.comm``; built
on the ``comm`` package's base classes so ipywidgets and every library that
calls ``comm.create_comm()`` / ``comm.get_comm_manager()`` work unchanged.
Imports neither IPython nor zmq: a comm talks to the frontend through its
kernel's ``send_comm``.
"""

from .comm import Comm
from .manager import CommManager

__all__ = ["Comm", "CommManager"]
