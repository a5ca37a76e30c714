"""Libraries that ask "am I in a notebook?" get the answer they get from ipykernel.

rich, plotly and many snippets compare ``type(get_ipython()).__name__`` with
"ZMQInteractiveShell"; pandas looks for "zmq" in the shell's type; tqdm looks
for an ``IPKernelApp`` section in the shell's config; ipywidgets and others
read the request being handled from the shell or the kernel.  A wrong answer
means plain text where the user expects HTML, widgets or progress bars.
Runs on both kernels (RELAYKERNEL_TEST_KERNEL=ipykernel).
"""

from __future__ import annotations

import pytest

from tests.kernel.helpers import collect_iopub_until_idle, execute_ok, get_reply, stream_text


@pytest.mark.parametrize("expr", [
    "type(get_ipython()).__name__ == 'ZMQInteractiveShell'",
    "'zmq' in str(type(get_ipython())).lower()",
    "'IPKernelApp' in get_ipython().config",
    "__import__('pandas.io.formats.console', fromlist=['x']).in_ipython_frontend()",
])
def test_the_shell_looks_like_a_notebook_kernel(kernel, expr):
    # printed from a cell: pandas finds get_ipython in builtins, where IPython puts it while a cell runs
    _, iopub = execute_ok(kernel.kc, f"print({expr})")
    assert stream_text(iopub, "stdout") == "True\n"


def test_the_request_being_handled_is_readable_from_shell_and_kernel(kernel):
    code = ("ip = get_ipython()\n"
            "print(ip.get_parent()['header']['msg_id'])\n"
            "print(ip.parent_header['header']['msg_id'])\n"
            "print(ip.kernel.get_parent()['header']['msg_id'])\n"
            "print(ip.kernel._parent_header['header']['msg_id'])\n")
    msg_id = kernel.kc.execute(code)
    assert get_reply(kernel.kc, msg_id)["content"]["status"] == "ok"
    lines = stream_text(collect_iopub_until_idle(kernel.kc, msg_id), "stdout").splitlines()
    assert lines == [msg_id] * 4
