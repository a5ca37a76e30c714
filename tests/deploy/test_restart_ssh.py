"""Kernel > Restart through jupyter_server with gateway_provisioners, over SSH.

The spec from ``python -m relaykernel.launch.specs --provisioner distributed --inplace-restart``
names relaykernel's own DistributedProvisioner (relaykernel/launch/gp_provisioner.py): a
restart (``POST /api/kernels/ID/restart``, as JupyterLab sends it) swaps the supervisor's
worker over the same launcher, so an ipywidgets slider comes back with its value and still
follows the client, and the session's variables are gone.  The client talks to the gateway
host directly or through a jupyter_server started with ``--gateway-url`` (test_server_ssh.py's
``server`` fixture); the kernel runs through the test's sshd on 127.0.0.2.  The spec without
``--inplace-restart`` relaunches the kernel: that is test_enterprise_gateway.py's second
restart test for EG, and gateway_provisioners' own behaviour here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psutil
import pytest

from tests.deploy.test_enterprise_gateway import gone, kernel_tree, move_slider, naming, open_slider, restart
from tests.deploy.test_server_ssh import SLIDER_VALUES, Channels, Server, server
from tests.deploy.test_ssh import sshd, write_ssh_spec
from tests.kernel.helpers import relaykernel_only, wait_for

pytestmark = relaykernel_only

__all__ = ["server", "sshd"]  # the fixtures, imported for this module's tests

INPLACE_SPEC_NAME = "relaykernel_ssh_inplace"


@pytest.fixture
def inplace_spec() -> Iterator[str]:
    out = write_ssh_spec(INPLACE_SPEC_NAME, "--inplace-restart")
    yield INPLACE_SPEC_NAME
    shutil.rmtree(out)


def test_restart_over_ssh_keeps_the_supervisor_and_its_comms(server: Server, inplace_spec: str) -> None:
    kernel = server.request("POST", "/api/kernels", {"name": inplace_spec})
    channels = Channels(server, kernel["id"])
    tree: list[psutil.Process] = []
    try:
        launcher, tree = kernel_tree(channels, server.gateway)
        worker = int(channels.evaluate("os.getpid()"))
        slider = open_slider(channels, 7)
        route = "" if server.gateway is server else " behind --gateway-url"
        channels = restart(server, kernel["id"], channels, f"restart in place through gateway_provisioners{route}")
        # the same launcher and supervisor, a new worker: variables gone, the widget kept
        assert kernel_tree(channels, server.gateway)[0].pid == launcher.pid
        assert int(channels.evaluate("os.getpid()")) != worker
        assert channels.evaluate("'s' in dir()") == "False"
        assert channels.evaluate(SLIDER_VALUES) == "[7]"
        move_slider(channels, slider, 9)
        assert channels.evaluate(SLIDER_VALUES) == "[9]"
        # and again: the provisioner (the same object) keeps the kernel as the first time
        channels = restart(server, kernel["id"], channels, f"second restart in place{route}")
        assert kernel_tree(channels, server.gateway)[0].pid == launcher.pid
        assert channels.evaluate(SLIDER_VALUES) == "[9]"
    finally:
        channels.close()
        server.request("DELETE", f"/api/kernels/{kernel['id']}")
    wait_for(lambda: gone(tree), timeout=30, what="the kernel's processes to end after DELETE")
    assert naming(kernel["id"]) == []
