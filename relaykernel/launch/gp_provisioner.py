"""gateway_provisioners' DistributedProvisioner, with restarts that keep relaykernel's supervisor.

Runs in the gateway's jupyter_server (jupyter_client 8), as the provisioner
``relaykernel-distributed-provisioner`` that ``python -m relaykernel.launch.specs
--provisioner distributed --inplace-restart`` names; that spec's env sets
``RELAYKERNEL_INPLACE_RESTART=1``, so the supervisor answers ``shutdown_request`` with
``restart: true`` by swapping its worker and staying.  jupyter_client keeps the provisioner
across a restart, so this one, as relaykernel's local provisioner does (provisioner.py):

* ``shutdown_requested(restart=True)`` for a live kernel sends the launcher's listener no
  shutdown, and remembers that the kernel stays;
* ``poll``/``wait`` then report the old kernel as gone, ``terminate``/``kill``/``cleanup``
  leave it alone;
* ``launch_kernel`` hands back the running kernel's connection info instead of launching.

The kernel's comms and widgets, kept by the supervisor, survive the restart; the session's
variables do not (the worker is new).  A kernel that died, or a forced restart (``now``),
is relaunched as DistributedProvisioner does.  Imports nothing of relaykernel's kernel.
"""

from __future__ import annotations

from typing import Any

from gateway_provisioners.distributed import DistributedProvisioner


class RelayDistributedProvisioner(DistributedProvisioner):  # type: ignore[misc]  # untyped base
    """DistributedProvisioner whose restarts swap relaykernel's worker, not the kernel."""

    _keeping = False

    async def _alive(self) -> bool:
        return bool(self.comm_port > 0 and await super().poll() is None)

    async def shutdown_requested(self, restart: bool = False) -> None:
        self._keeping = restart and await self._alive()
        if self._keeping:
            self.log.info("Restart of kernel '%s': the supervisor swaps its worker, launcher pid %s on '%s' stays",
                          self.kernel_id, self.pid, self.assigned_host)
            return
        await super().shutdown_requested(restart=restart)

    async def poll(self) -> int | None:
        if self._keeping:
            return 0  # the old kernel is "gone" to jupyter_client; launch_kernel hands it back
        result: int | None = await super().poll()
        return result

    async def wait(self) -> int | None:
        if self._keeping:
            return 0
        result: int | None = await super().wait()
        return result

    async def terminate(self, restart: bool = False) -> None:
        if not self._keeping:
            await super().terminate(restart=restart)

    async def kill(self, restart: bool = False) -> None:
        if not self._keeping:
            await super().kill(restart=restart)

    async def cleanup(self, restart: bool = False) -> None:
        if not self._keeping:  # else the launcher, its host and its tunnels live on
            await super().cleanup(restart=restart)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        keeping, self._keeping = self._keeping, False
        if keeping and await self._alive():
            self.log.info("Kernel '%s' restarted in place: launcher pid %s", self.kernel_id, self.pid)
            return self.connection_info
        return await super().launch_kernel(cmd, **kwargs)
