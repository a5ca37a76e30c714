"""The supervisor stays small: none of its modules import IPython."""

import subprocess
import sys

SUPERVISOR_MODULES = [
    "relaykernel.__main__", "relaykernel.supervisor.app", "relaykernel.supervisor.kernel",
    "relaykernel.supervisor.early", "relaykernel.provisioner", "relaykernel.kernelspec",
]


def test_supervisor_modules_do_not_import_ipython():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in SUPERVISOR_MODULES)
            + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipykernel', 'ipywidgets'))\n"
            + "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
