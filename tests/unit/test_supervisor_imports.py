"""The supervisor stays small: none of its modules import IPython."""

import subprocess
import sys

SUPERVISOR_MODULES = [
    "relaykernel.__main__", "relaykernel.supervisor.app", "relaykernel.supervisor.loop",
    "relaykernel.supervisor.early", "relaykernel.provisioner", "relaykernel.kernelspec",
]


def test_supervisor_modules_do_not_import_ipython():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in SUPERVISOR_MODULES)
            + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipykernel', 'ipywidgets'))\n"
            + "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_early_step_needs_only_zmq_and_the_standard_library():
    """What runs before kernel_info can be answered must stay light: no
    jupyter_client (its package import loads asyncio and tornado), no traitlets,
    no multiprocess.  The running supervisor does not need jupyter_client at all."""
    code = ("import sys\n"
            "import relaykernel.supervisor.early, relaykernel.signing\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules}\n"
            "             & {'jupyter_client', 'traitlets', 'multiprocess', 'tornado', 'asyncio', 'IPython'})\n"
            "assert not bad, bad\n"
            # each of these costs ~2-6 ms before the frontend's kernel_info can be answered
            "slow = sorted({'logging', 'dataclasses', 'inspect', 'socket', 'uuid'} & set(sys.modules))\n"
            "assert not slow, slow\n"
            "import relaykernel.supervisor.app, relaykernel.supervisor.loop\n"
            "assert 'jupyter_client' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
