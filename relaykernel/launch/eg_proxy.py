"""Enterprise Gateway's DistributedProcessProxy, with restarts that keep relaykernel's supervisor.

Runs inside Enterprise Gateway 3.x (it imports ``enterprise_gateway``; relaykernel is installed
in EG's environment without its dependencies, ``pip install --no-deps relaykernel``, for this
module alone: it imports nothing else of relaykernel).  Named in the kernelspec that
``python -m relaykernel.launch.specs --gateway enterprise-gateway --inplace-restart`` writes,
whose env also sets ``RELAYKERNEL_INPLACE_RESTART=1`` for the supervisor.

A restart through EG (``POST /api/kernels/ID/restart``, JupyterLab's Kernel > Restart) is
jupyter_client 6's: ``shutdown_request`` with ``restart: true`` on the control channel, the
listener's shutdown, a wait for the process to end, then a new launch with a new process
proxy.  The supervisor answers such a request by swapping its worker and staying, so this
proxy keeps the launcher:

* ``shutdown_listener`` during a restart of a live kernel sends nothing (no SIGTERM, no
  shutdown) and records the kernel's process and connection info on the kernel manager;
* ``poll``/``wait`` then report the old process as gone, so the wait ends at once;
* the next proxy's ``launch_process`` takes the recorded kernel instead of launching one.

So the kernel's comms and widgets, kept by the supervisor, survive the restart, and the
session's variables do not (the worker is new).  A kernel that died, or a forced restart
(``now``: EG's auto-restart after a death), is relaunched as DistributedProcessProxy does.
Not with ``EG_ENABLE_TUNNELING``: the tunnels are re-made, but that path is untested.
"""

from __future__ import annotations

from typing import Any

from enterprise_gateway.services.processproxies.distributed import DistributedProcessProxy

#: Where the kept kernel waits, on the kernel manager, between the old proxy and the new one.
KEPT = "_relaykernel_kept_kernel"


class RelayDistributedProcessProxy(DistributedProcessProxy):  # type: ignore[misc]  # EG is untyped
    """DistributedProcessProxy whose restarts swap relaykernel's worker, not the kernel."""

    kept = False

    def shutdown_listener(self) -> None:
        if self.kept:
            return
        if getattr(self.kernel_manager, "restarting", False) and self.comm_port > 0 and self._alive():
            self._keep()
            return
        super().shutdown_listener()

    def _alive(self) -> bool:
        return bool(super().poll() is None)

    def _keep(self) -> None:
        km = self.kernel_manager
        connection = dict(self.tunneled_connect_info or km.get_connection_info())
        connection["comm_port"] = (self.tunneled_connect_info or {}).get("comm_port", self.comm_port)
        setattr(km, KEPT, {"process": self.get_process_info(), "connection": connection,
                           "local_proc": self.local_proc})
        self.kept = True
        self.log.info("Restart of kernel '%s': the supervisor swaps its worker, launcher pid %s on '%s' stays",
                      self.kernel_id, self.pid, self.assigned_host)

    def poll(self) -> Any:
        if self.kept:
            return 0  # the old kernel is "gone" to jupyter_client; the next proxy takes it over
        return super().poll()

    def wait(self) -> Any:
        if self.kept:
            return 0
        return super().wait()

    def kill(self) -> Any:
        if self.kept:
            return None
        return super().kill()

    def terminate(self) -> Any:
        if self.kept:
            return None
        return super().terminate()

    async def launch_process(self, kernel_cmd: Any, **kwargs: Any) -> Any:
        kept = self.kernel_manager.__dict__.pop(KEPT, None)
        if kept is None:
            return await super().launch_process(kernel_cmd, **kwargs)
        # without the tunnels' record: _setup_connection_info below makes them (once)
        self.load_process_info({**kept["process"], "tunneled_connect_info": None})
        self.local_proc = kept["local_proc"]
        self.assigned_host = kept["process"]["assigned_host"]
        if self.least_connection:
            DistributedProcessProxy.kernel_on_host.add_kernel_id(self.assigned_host, self.kernel_id)
        self._setup_connection_info(dict(kept["connection"]))
        self.log.info("Kernel '%s' restarted in place: launcher pid %s", self.kernel_id, self.pid)
        return self
