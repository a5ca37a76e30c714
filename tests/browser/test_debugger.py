"""JupyterLab 4 in headless Chromium: the visual debugger on relaykernel (issue 20).

The notebook's bug button is enabled (the kernelspec and kernel_info say
``debugger: true``); with the debugger on, a breakpoint set in a cell's gutter
stops the cell there, the Variables panel shows the function's local, and
Continue lets the cell finish.  Then the worker is killed while the cell
is stopped: the panel is released and the same breakpoint stops the next run.

Screenshots go to tests/artifacts/browser/ (NN-debugger-step.png).

Run:  .venv/bin/python -m pytest tests/browser/test_debugger.py -m browser
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import LabServer
from .test_jupyterlab import (
    RUN_TIMEOUT,
    UI_TIMEOUT,
    cells,
    notebook_page,
    output_text,
    run_cell,
    shot,
    wait_cell_done,
    wait_kernel_idle,
)

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NOTEBOOK = "debugger.ipynb"
CELL = "def twice_plus_one(n):\n    total = n * 2\n    return total + 1\n\nprint(twice_plus_one(20))"
BREAKPOINT_LINE = 3  # return total + 1: ``total`` is a local there


@pytest.fixture(scope="module")
def page(lab_server: LabServer, browser_context: Any, artifacts_dir: Path) -> Iterator[Any]:
    with notebook_page(lab_server, browser_context, artifacts_dir, NOTEBOOK, "debugger") as pg:
        yield pg


def click_gutter(page: Any, cell: Any, line: int) -> None:
    """Click the breakpoint gutter beside ``line`` (1-based) of the cell's editor."""
    target = cell.locator(".cm-line").nth(line - 1).bounding_box()
    gutter = cell.locator(".cm-breakpoint-gutter").first.bounding_box()
    assert target and gutter, "the cell's editor has no breakpoint gutter"
    page.mouse.click(gutter["x"] + gutter["width"] / 2, target["y"] + target["height"] / 2)


def resume(page: Any) -> None:
    """Continue, with the button of the "Paused in Debugger" overlay over the notebook
    (its first; F9 needs the focus where JupyterLab expects it)."""
    page.locator(".jp-DebuggerPausedOverlay .jp-DebuggerPausedButton").first.click()


def test_a_breakpoint_stops_the_cell_and_the_variables_panel_shows_a_local(
        page: Any, lab_server: LabServer, artifacts_dir: Path) -> None:
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
    wait_kernel_idle(page, lab_server)
    bug = page.locator(".jp-NotebookPanel-toolbar .jp-DebuggerBugButton")
    # enabled once JupyterLab has checked the kernel (a jp-button: aria-disabled, not disabled)
    expect(bug).to_have_attribute("aria-disabled", "false", timeout=UI_TIMEOUT)
    bug.click()
    expect(bug).to_have_attribute("aria-pressed", "true", timeout=UI_TIMEOUT)

    cell = cells(page).first
    cell.locator(".cm-content").click()
    page.keyboard.insert_text(CELL)  # as pasted: the editor does not indent it again
    expect(cell.locator(".cm-line")).to_have_count(CELL.count("\n") + 1, timeout=5_000)
    click_gutter(page, cell, BREAKPOINT_LINE)
    expect(cell.locator(".cm-breakpoint-gutter .cm-gutterElement span.cm-breakpoint-gutter")
           ).to_have_count(1, timeout=UI_TIMEOUT)
    # the Breakpoints panel lists it once the kernel answered setBreakpoints: a cell run
    # before that (the debug session still starting) would not stop
    expect(page.locator(".jp-DebuggerBreakpoints .jp-DebuggerBreakpoint")).to_have_count(1, timeout=UI_TIMEOUT)
    shot(page, artifacts_dir, "debugger-breakpoint")

    page.keyboard.press("Shift+Enter")
    variables = page.locator(".jp-DebuggerVariables .jp-DebuggerVariables-name")
    expect(variables.filter(has_text="total").first).to_be_visible(timeout=RUN_TIMEOUT)
    expect(page.locator(".jp-DebuggerCallstack")).to_contain_text("twice_plus_one", timeout=UI_TIMEOUT)
    shot(page, artifacts_dir, "debugger-stopped")

    resume(page)
    wait_cell_done(cell)
    assert output_text(cell).split()[0] == "41"  # (then the note that no snapshot is kept)
    shot(page, artifacts_dir, "debugger-continued")


def test_a_crash_at_a_breakpoint_releases_the_panel_and_the_breakpoint_stops_again(
        page: Any, lab_server: LabServer, artifacts_dir: Path) -> None:
    """The worker dies while the cell is stopped: the pause overlay and the call stack
    clear, the cell gets its WorkerDied error, and the breakpoint set before the crash
    stops the next run (the supervisor set it again in the new worker)."""
    probe = run_cell(page, "import os; print(os.getpid())")
    wait_cell_done(probe)
    worker = int(output_text(probe).split()[0])
    cell = cells(page).first
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    overlay = page.locator(".jp-DebuggerPausedOverlay")
    expect(overlay.first).to_be_visible(timeout=RUN_TIMEOUT)
    expect(page.locator(".jp-DebuggerCallstack")).to_contain_text("twice_plus_one", timeout=UI_TIMEOUT)

    os.kill(worker, signal.SIGKILL)
    expect(cell.locator(".jp-OutputArea-output")).to_contain_text("WorkerDied", timeout=RUN_TIMEOUT)
    expect(overlay).to_have_count(0, timeout=UI_TIMEOUT)
    expect(page.locator(".jp-DebuggerCallstack")).not_to_contain_text("twice_plus_one", timeout=UI_TIMEOUT)
    shot(page, artifacts_dir, "debugger-crashed")

    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    variables = page.locator(".jp-DebuggerVariables .jp-DebuggerVariables-name")
    expect(variables.filter(has_text="total").first).to_be_visible(timeout=RUN_TIMEOUT)
    shot(page, artifacts_dir, "debugger-stopped-again")
    resume(page)
    wait_cell_done(cell)
    assert output_text(cell).split()[0] == "41"
