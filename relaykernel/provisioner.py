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
A live supervisor's workers are found in its process tree; the groups of a
supervisor that died (SIGKILL, the OOM killer) are in a 0700 directory of
the provisioner's, where each worker records its own (progress.record_group),
and ``cleanup`` kills them too.  A recorded group is killed only if one of its
processes carries that directory in its environment: a group id reused by
someone else's program is left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from typing import Any

import psutil
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from . import heap
from .progress import GROUPS_ENV, group_alive

INPLACE_ENV = "RELAYKERNEL_INPLACE_RESTART"


class RelayProvisioner(LocalProvisioner):
    """LocalProvisioner whose restarts keep the supervisor and swap its worker."""

    _swapping = False
    #: where the workers record their process groups (see the module docstring)
    groups_dir: str | None = None

    def _supervisor_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        env = dict(kwargs.get("env") or os.environ)
        env[INPLACE_ENV] = "1"
        if self.groups_dir is None:
            self.groups_dir = tempfile.mkdtemp(prefix="relaykernel-groups-")
        env[GROUPS_ENV] = self.groups_dir
        heap.supervisor_env(env)  # the worker template, forked from the supervisor, gets huge pages
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
        groups = {*self._worker_groups(), *self._recorded_groups()}
        await super().kill(restart=restart)
        _kill_groups(groups)

    def _recorded_groups(self) -> set[int]:
        """The groups workers recorded that still hold one of our processes."""
        if self.groups_dir is None:
            return set()
        try:
            names = os.listdir(self.groups_dir)
        except OSError:
            return set()
        recorded = {int(name) for name in names if name.isdigit() and group_alive(int(name))}
        return _groups_marked(recorded, self.groups_dir) if recorded else set()

    def _worker_groups(self) -> list[int]:
        """Process groups led by the supervisor's workers.  Spawned workers are its
        children, forked ones the children of its fork server, which (like the
        resource tracker) stays in the supervisor's group: so look into the children
        that lead no group of their own, and collect those that do.  Or the children
        of the worker template (relaykernel/worker/template.py), which leads a group
        of its own: look into it too."""
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
                with contextlib.suppress(OSError, psutil.Error):
                    if os.getpgid(child.pid) == child.pid:
                        groups.append(child.pid)
                        if child.ppid() == self.pid and child.name() == _TEMPLATE_NAME:
                            in_our_group.append(child.pid)  # its children are the workers
                    else:
                        in_our_group.append(child.pid)
        return groups

    async def cleanup(self, restart: bool = False) -> None:
        if self._swapping:
            return  # the supervisor, its ports and its connection file live on
        # a supervisor that died by itself (not through kill) left its workers' programs
        _kill_groups(self._recorded_groups())
        if self.groups_dir is not None:
            shutil.rmtree(self.groups_dir, ignore_errors=True)
            self.groups_dir = None
        await super().cleanup(restart=restart)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        swapping, self._swapping = self._swapping, False
        if swapping and self._supervisor_alive():
            return self.connection_info
        return await super().launch_kernel(cmd, **kwargs)


#: The worker template's process name (relaykernel/worker/template.py: NAME).
_TEMPLATE_NAME = "relay-template"


def _groups_marked(candidates: set[int], groups_dir: str) -> set[int]:
    """Those of ``candidates`` that hold a process whose environment names ``groups_dir``:
    a group id is reused only once all its processes have ended, so a group that holds
    one of ours is still ours."""
    ours: set[int] = set()
    for proc in psutil.process_iter():
        try:
            pgid = os.getpgid(proc.pid)
            if pgid in candidates and pgid not in ours and proc.environ().get(GROUPS_ENV) == groups_dir:
                ours.add(pgid)
        except (psutil.Error, OSError):
            continue  # ended meanwhile, or not ours to read
    return ours


def _kill_groups(groups: set[int]) -> None:
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
