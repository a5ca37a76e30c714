"""nbclient and papermill run notebooks on relaykernel, including a cell that kills the worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

from tests.frontends.procs import MARKER_VAR, marked_env, new_marker, reap_marked
from tests.kernel.helpers import relaykernel_only

CRASH = "import os\nos._exit(1)"


def _notebook(*sources: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "relaykernel", "display_name": "relaykernel",
                                 "language": "python"}
    return nb


def _crash_notebook() -> nbformat.NotebookNode:
    return _notebook(
        "print('before crash')\nx = 40",
        CRASH,
        "1+1",
        "print('still here')",
    )


def _result(cell) -> str:
    [res] = [o for o in cell.outputs if o.output_type == "execute_result"]
    return res["data"]["text/plain"]


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _check_crash_outputs(nb) -> None:
    nbformat.validate(nb)
    c0, c1, c2, c3 = nb.cells
    assert _stdout(c0) == "before crash\n"
    errors = [o for o in c1.outputs if o.output_type == "error"]
    assert len(errors) == 1, c1.outputs
    assert errors[0].ename == "WorkerDied"
    assert _result(c2) == "2"
    assert _stdout(c3) == "still here\n"


@pytest.fixture
def marker():
    m = new_marker()
    yield m
    killed = reap_marked(m)
    assert not killed, f"kernel processes had to be killed after the notebook ran: {killed}"


def _run_nbclient(nb, tmp_path: Path, marker: str, **kw) -> None:
    client = NotebookClient(nb, kernel_name="relaykernel", timeout=60, startup_timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}}, **kw)
    client.execute(env=marked_env(marker))


@relaykernel_only
def test_nbclient_worker_crash_allow_errors(tmp_path, marker):
    nb = _crash_notebook()
    _run_nbclient(nb, tmp_path, marker, allow_errors=True)
    _check_crash_outputs(nb)
    # The kernel keeps counting across the crash.  (The crashed cell's own count comes from
    # its execute_input, which the dying worker sometimes never delivers: the dying worker's link drops it.)
    assert nb.cells[0].execution_count == 1
    assert nb.cells[2].execution_count == 3
    assert nb.cells[3].execution_count == 4


@relaykernel_only
def test_nbclient_worker_crash_stops_without_allow_errors(tmp_path, marker):
    nb = _crash_notebook()
    with pytest.raises(CellExecutionError) as info:
        _run_nbclient(nb, tmp_path, marker)
    assert info.value.ename == "WorkerDied"
    assert nb.cells[1].outputs[-1].ename == "WorkerDied"
    assert nb.cells[2].outputs == [] and nb.cells[2].execution_count is None


@relaykernel_only
def test_nbclient_raises_exception_tag(tmp_path, marker):
    """A crashing cell tagged raises-exception is allowed; the rest of the notebook runs."""
    nb = _crash_notebook()
    nb.cells[1].metadata["tags"] = ["raises-exception"]
    _run_nbclient(nb, tmp_path, marker)
    _check_crash_outputs(nb)


def _without_papermill_markers(nb):
    nb.cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    return nb


@pytest.mark.slow
@relaykernel_only
def test_papermill_api_worker_crash(tmp_path, marker, monkeypatch):
    papermill = pytest.importorskip("papermill")
    nb = _crash_notebook()
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    # papermill starts the kernel with this process's environment
    monkeypatch.setenv(MARKER_VAR, marker)
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(src), str(out), kernel_name="relaykernel",
                                   start_timeout=60, execution_timeout=60, progress_bar=False)
    assert info.value.ename == "WorkerDied"
    assert info.value.cell_index == 1
    # papermill wrote the notebook up to the failure, with its error banner
    result = nbformat.read(out, as_version=4)
    assert "papermill-error-cell-tag" in result.cells[0].metadata["tags"]
    c0, c1, c2, _c3 = _without_papermill_markers(result).cells
    assert _stdout(c0) == "before crash\n"
    assert [o.ename for o in c1.outputs if o.output_type == "error"] == ["WorkerDied"]
    assert c1.metadata["papermill"]["status"] == "failed"
    assert c2.outputs == [] and c2.metadata["papermill"]["status"] == "pending"
    assert result.metadata["papermill"]["exception"] is True

    # With allow_errors (passed through to nbclient) the later cells run; papermill still
    # reports the error cell at the end, as it does for any error output.
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(src), str(out), kernel_name="relaykernel",
                                   start_timeout=60, execution_timeout=60, progress_bar=False,
                                   allow_errors=True)
    assert info.value.ename == "WorkerDied"
    result = _without_papermill_markers(nbformat.read(out, as_version=4))
    _check_crash_outputs(result)
    assert [c.metadata["papermill"]["status"] for c in result.cells] == ["completed"] * 4


@pytest.mark.slow
def test_papermill_api_parameters(tmp_path, marker, monkeypatch):
    papermill = pytest.importorskip("papermill")
    nb = _notebook("a = 1\nb = 2", "print(a + b)")
    nb.cells[0].metadata["tags"] = ["parameters"]
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    monkeypatch.setenv(MARKER_VAR, marker)
    papermill.execute_notebook(str(src), str(out), kernel_name="relaykernel",
                               parameters={"a": 40}, start_timeout=60, execution_timeout=60,
                               progress_bar=False)
    result = nbformat.read(out, as_version=4)
    assert "injected-parameters" in result.cells[1].metadata["tags"]
    assert _stdout(result.cells[-1]) == "42\n"
    assert result.metadata["papermill"]["exception"] is None


def _papermill_cli(src: Path, out: Path, marker: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "papermill", str(src), str(out), "-k", "relaykernel",
         "--start-timeout", "60", "--execution-timeout", "60", "--no-progress-bar", *args],
        env=marked_env(marker), capture_output=True, text=True, timeout=180, cwd=src.parent,
        check=False,
    )


@pytest.mark.slow
@relaykernel_only
def test_papermill_cli_worker_crash(tmp_path, marker):
    nb = _crash_notebook()
    nb.cells.append(new_code_cell("print('never')"))
    nb.cells[0].metadata["tags"] = ["parameters"]
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    proc = _papermill_cli(src, out, marker, "-p", "x", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "PapermillExecutionError" in proc.stderr
    assert 'Exception encountered at "In [' in proc.stderr
    result = _without_papermill_markers(nbformat.read(out, as_version=4))
    c0, params, c1, c2, _c3, c4 = result.cells
    assert "injected-parameters" in params.metadata["tags"]
    assert _stdout(c0) == "before crash\n"
    [err] = [o for o in c1.outputs if o.output_type == "error"]
    assert err.ename == "WorkerDied"
    assert "exit code 1" in err.evalue
    assert c2.outputs == [] and c4.outputs == []


@pytest.mark.slow
@relaykernel_only
def test_papermill_cli_crash_message_names_worker_died(tmp_path, marker):
    nb = _crash_notebook()
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    proc = _papermill_cli(src, out, marker)
    assert proc.returncode == 1
    assert "WorkerDied" in proc.stderr
