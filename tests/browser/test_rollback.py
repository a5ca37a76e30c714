"""JupyterLab 4 in headless Chromium: a segfault in a cell rolls the session back.

Issue 18's "done when", in a real browser: the user defines data in a cell, a
later cell segfaults in native code (``ctypes.string_at(0)``), and the cell
after that still sees the data, as it was before the crashed cell.  The
crashed cell's output is the crash report, which says the session was rolled
back.  The kernel is relaykernel as ``python -m relaykernel install`` installs
it (conftest.py): snapshots are on by default there, with no option in the
kernelspec's argv.

relaykernel only: on ipykernel the segfault ends the kernel, and the data with it.

Screenshots go to tests/artifacts/browser/rollback/ (NN-rollback-step.png), with
this module's server log: a directory of its own, so that a run of the whole
directory keeps test_jupyterlab.py's (conftest.py's ``artifacts_dir`` empties it).

Run:  .venv/bin/python -m pytest tests/browser/test_rollback.py -m browser
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .conftest import ARTIFACTS, KERNEL_NAME, LabServer
from .test_jupyterlab import (
    RUN_TIMEOUT,
    UI_TIMEOUT,
    notebook_page,
    output_text,
    run_cell,
    shot,
    wait_cell_done,
    wait_for,
    wait_kernel_idle,
)

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NOTEBOOK = "rollback.ipynb"

#: One line each (the editor would re-indent a block).
DEFINE = ("import os, numpy as np; data = {'rows': list(range(5))}; arr = np.arange(10); "
          "total = int(arr.sum()); print('worker', os.getpid(), 'total', total)")
SEGFAULT = "data['rows'].append(99); total = -1; import ctypes; ctypes.string_at(0)"
CHECK = "print(total, data['rows'], int(arr.sum()), os.getpid())"


@pytest.fixture(scope="module")
def artifacts_dir() -> Path:
    path = ARTIFACTS / "rollback"
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.png"):
        old.unlink()
    return path


@pytest.fixture(scope="module")
def page(lab_server: LabServer, browser_context: Any, artifacts_dir: Path) -> Iterator[Any]:
    with notebook_page(lab_server, browser_context, artifacts_dir, NOTEBOOK, "rollback") as pg:
        yield pg


def _snapshot_kept(worker: int) -> bool:
    """The worker has forked its snapshot (its only child) since the last cell."""
    try:
        return any(c.status() != psutil.STATUS_ZOMBIE for c in psutil.Process(worker).children())
    except psutil.NoSuchProcess:
        return False


def test_a_segfault_rolls_the_notebook_back(page: Any, lab_server: LabServer, artifacts_dir: Path) -> None:
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
    kernel = wait_kernel_idle(page, lab_server, timeout=90)
    assert kernel["name"] == KERNEL_NAME
    listed = json.loads((lab_server.root_dir / NOTEBOOK).read_text())["metadata"]["kernelspec"]
    assert listed["name"] == KERNEL_NAME, listed

    cell = run_cell(page, DEFINE)
    wait_cell_done(cell)
    expect(cell.locator(".jp-OutputArea-output")).to_have_text(re.compile(r"^worker \d+ total 45\s*$"),
                                                               timeout=UI_TIMEOUT)
    worker = int(output_text(cell).split()[1])
    # what the user's typing of the next cell gives it in practice: a moment of idle
    wait_for(lambda: _snapshot_kept(worker), 30, "the worker to keep a snapshot after the cell")
    shot(page, artifacts_dir, "rollback-defined")

    cell = run_cell(page, SEGFAULT)
    expect(cell.locator(".jp-OutputArea-output").filter(has_text="WorkerDied")).to_be_visible(timeout=RUN_TIMEOUT)
    wait_cell_done(cell)
    expect(cell.locator(".jp-InputArea-prompt")).to_have_text(re.compile(r"^\s*\[2\]:?\s*$"))
    report = output_text(cell)
    shot(page, artifacts_dir, "rollback-crash-report")
    assert "killed by SIGSEGV" in report, report
    assert "Rolled back to the state before cell [2]" in report, report
    assert re.search(r"\d+ name\(s\) kept", report), report
    assert "The snapshot has taken over" in report, report

    # the same kernel, idle again, no dialog: the browser saw no restart
    after = wait_kernel_idle(page, lab_server)
    assert after["id"] == kernel["id"], (kernel, after)
    assert page.locator(".jp-Dialog").count() == 0, "a dialog popped up after the crash"

    cell = run_cell(page, CHECK)
    wait_cell_done(cell)
    expect(cell.locator(".jp-InputArea-prompt")).to_have_text(re.compile(r"^\s*\[3\]:?\s*$"))
    expect(cell.locator(".jp-OutputArea-output")).to_have_text(re.compile(r"^45 \[0, 1, 2, 3, 4\] 45 \d+\s*$"),
                                                               timeout=UI_TIMEOUT)
    assert int(output_text(cell).split()[-1]) != worker, "the crashed worker still runs the cells"
    wait_kernel_idle(page, lab_server)
    shot(page, artifacts_dir, "rollback-data-kept")
