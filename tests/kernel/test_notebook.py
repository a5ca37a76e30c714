"""Executing a whole notebook with nbclient on the 'relaykernel' kernelspec."""

from __future__ import annotations

import nbformat
import psutil
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tests.kernel.helpers import kernel_env


def _text(outputs, name="stdout"):
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == name)


def test_notebook_execution_with_nbclient(tmp_path):
    cells = [
        new_markdown_cell("# relaykernel notebook test"),
        new_code_cell("print('hello nb')\nvalue = 20"),
        new_code_cell(
            "from IPython.display import display, HTML\n"
            "display(HTML('<i>shown</i>'))\n"
            "value + 22"
        ),
        new_code_cell("raise ValueError('expected failure')"),
        new_code_cell("import os\n_ = os.system('echo fromfd-nb')\nprint('after error', value)"),
        new_code_cell("h = display('first', display_id='nbid')\nh.update('second')"),
        new_code_cell(
            "from IPython.display import clear_output\n"
            "print('gone')\nclear_output()\nprint('kept')"
        ),
        new_code_cell("import sys\nprint('err line', file=sys.stderr)"),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "relaykernel", "display_name": "relaykernel",
                                 "language": "python"}

    kernel_procs: list[psutil.Process] = []

    def on_notebook_start(notebook, **kw):
        pid = client.km.provisioner.process.pid
        proc = psutil.Process(pid)
        kernel_procs.append(proc)
        kernel_procs.extend(proc.children(recursive=True))

    client = NotebookClient(
        nb,
        kernel_name="relaykernel",
        timeout=60,
        startup_timeout=60,
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
        on_notebook_start=on_notebook_start,
    )
    try:
        client.execute(env=kernel_env())
    finally:
        # nbclient shuts the kernel down; it must really be gone
        _gone, alive = psutil.wait_procs(kernel_procs, timeout=10)
        for p in alive:
            p.kill()
    assert kernel_procs, "on_notebook_start hook did not run"
    assert not alive, f"kernel processes left after nbclient finished: {alive}"

    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))

    assert _text(code[0].outputs) == "hello nb\n"

    out = code[1].outputs
    assert [o.output_type for o in out] == ["display_data", "execute_result"]
    assert out[0]["data"]["text/html"] == "<i>shown</i>"
    assert out[1]["data"]["text/plain"] == "42"
    assert out[1]["execution_count"] == code[1].execution_count

    [err] = code[2].outputs
    assert err.output_type == "error"
    assert err.ename == "ValueError"
    assert err.evalue == "expected failure"
    assert err.traceback

    # later cells ran despite the error, state intact, fd-level output captured
    assert "fromfd-nb" in _text(code[3].outputs)
    assert "after error 20" in _text(code[3].outputs)

    # update_display_data was applied to the displayed output
    [disp] = code[4].outputs
    assert disp.output_type == "display_data"
    assert disp["data"]["text/plain"] == "'second'"

    # clear_output removed the earlier output
    assert _text(code[5].outputs) == "kept\n"

    assert _text(code[6].outputs, "stderr") == "err line\n"

    nbformat.write(nb, tmp_path / "executed.ipynb")
