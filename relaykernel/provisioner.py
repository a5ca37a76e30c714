"""A jupyter_client kernel provisioner that restarts relaykernel in place.

``KernelManager.restart_kernel()`` (JupyterLab, nbclient, jupyter_server)
normally kills the kernel process and launches a new one, which would throw
away the supervisor's comm registry and every widget's state.  Named in the
kernelspec that ``python -m relaykernel install`` writes, this provisioner
lets the supervisor swap only its worker instead:

* ``pre_launch`` tells the supervisor (env ``RELAYKERNEL_INPLACE_RESTART=1``)
  that a ``shutdown_request`` with ``restart: true`` means "new worker, same
  supervisor";
* during such a restart ``poll``/``wait`` report the old kernel as gone and
  ``launch_kernel`` hands back the running supervisor's connection info
  instead of starting a process.

A supervisor that really died is relaunched normally.  A *forced* restart
(``restart_kernel(now=True)``) also relaunches it: jupyter_client then kills
the kernel without telling the provisioner that a restart is under way, and
a provisioner that refused ``kill()`` would break ``kill_kernel()``.  To swap
the worker by signal, send the supervisor SIGHUP.  Runs in the client's
process (jupyter_client), never in the kernel.

A kill (``shutdown_kernel(now=True)``, a forced restart) SIGKILLs the
supervisor's process group.  Each worker leads a group of its own (so an
interrupt reaches what it started), and dies with the supervisor, but the
programs a cell started would outlive them: so ``kill`` also kills the
workers' groups, as a kill of ipykernel's group takes its children along.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import psutil
from jupyter_client.provisioning import LocalProvisioner

INPLACE_ENV = "RELAYKERNEL_INPLACE_RESTART"


class RelayProvisioner(LocalProvisioner):  # type: ignore[misc]
    """LocalProvisioner whose restarts keep the supervisor and swap its worker."""

    _swapping = False

    def _supervisor_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        env = dict(kwargs.get("env") or os.environ)
        env[INPLACE_ENV] = "1"
        kwargs["env"] = env
        return kwargs

    async def shutdown_requested(self, restart: bool = False) -> None:
        self._swapping = restart and self._supervisor_alive()
        await super().shutdown_requested(restart=restart)

    async def poll(self) -> int | None:
        if self._swapping:
            return 0
        return await super().poll()

    async def wait(self) -> int | None:
        if self._swapping:
            return 0
        return await super().wait()

    async def terminate(self, restart: bool = False) -> None:
        if self._swapping:
            return
        await super().terminate(restart=restart)

    async def kill(self, restart: bool = False) -> None:
        groups = self._worker_groups()
        await super().kill(restart=restart)
        for pgid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)

    def _worker_groups(self) -> list[int]:
        """Process groups led by the supervisor's workers.  Spawned workers are its
        children, forked ones the children of its fork server, which (like the
        resource tracker) stays in the supervisor's group: so look into the children
        that lead no group of their own, and collect those that do."""
        if not self._supervisor_alive():
            return []
        groups: list[int] = []
        in_our_group = [self.pid]
        while in_our_group:
            try:
                children = psutil.Process(in_our_group.pop()).children()
            except psutil.Error:
                continue
            for child in children:
                with contextlib.suppress(OSError):
                    if os.getpgid(child.pid) == child.pid:
                        groups.append(child.pid)
                    else:
                        in_our_group.append(child.pid)
        return groups

    async def cleanup(self, restart: bool = False) -> None:
        if self._swapping:
            return  # the supervisor, its ports and its connection file live on
        await super().cleanup(restart=restart)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        swapping, self._swapping = self._swapping, False
        if swapping and self._supervisor_alive():
            return self.connection_info
        return await super().launch_kernel(cmd, **kwargs)

