"""A jupyter_client kernel provisioner for relaykernel.

Today it behaves exactly like jupyter_client's LocalProvisioner; it is named
in the kernelspec so that restarts can later keep the supervisor alive.
"""

from __future__ import annotations

from jupyter_client.provisioning import LocalProvisioner


class RelayProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Launches the relaykernel supervisor as a local process."""
