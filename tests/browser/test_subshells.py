"""JupyterLab 4 in headless Chromium: widgets and a subshell console answer while a cell runs.

Issue 19 in a real browser.  relaykernel lists "kernel subshells" in
kernel_info, so JupyterLab sends every comm message over a subshell (its
``commsOverSubshells`` setting, one subshell per comm target by default):

1. a cell loops until a Button is clicked; the click's callback runs at once,
   on the widget target's subshell, and the loop's cell ends: the test reports
   the time from the click to the cell's output in the page;
2. "New Subshell Console for Notebook" opens a console on a new subshell of the
   notebook's kernel, whose code runs beside the notebook's busy cell.

ipykernel 7.4 has subshells too; this file runs on relaykernel only.

Screenshots go to tests/artifacts/browser/ (NN-subshells-step.png).

Run:  .venv/bin/python -m pytest tests/browser/test_subshells.py -m browser
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from .conftest import LabServer
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

NOTEBOOK = "subshells.ipynb"

#: One line each (the editor would re-indent a block).
BUTTON = ("import ipywidgets as w, time; stop = []; b = w.Button(description='Stop the loop'); "
          "b.on_click(lambda _: stop.append(time.monotonic())); b")
#: Loops until ``stop`` has an entry (or 90 s), then says how long after the stop it ended.
LOOP = ("t0 = time.monotonic(); any(time.sleep(0.01) for _ in iter(lambda: bool(stop) or "
        "time.monotonic() - t0 > 90, True)); print('stopped', bool(stop), 'ran', round(time.monotonic() - t0, 1), "
        "'s; ended', round((time.monotonic() - stop[-1]) * 1000) if stop else None, 'ms after the stop')")


@pytest.fixture(scope="module")
def page(lab_server: LabServer, browser_context: Any, artifacts_dir: Path) -> Iterator[Any]:
    with notebook_page(lab_server, browser_context, artifacts_dir, NOTEBOOK, "subshells") as pg:
        yield pg


def subshells_of_the_kernel(server: LabServer) -> list[str]:
    """list_subshell_request on the notebook kernel's control channel, from a client of
    the test's own (the page's connection is the browser's)."""
    (kernel,) = server.kernels()
    runtime = Path(server.env["JUPYTER_RUNTIME_DIR"])
    kc = BlockingKernelClient(connection_file=str(runtime / f"kernel-{kernel['id']}.json"))
    kc.load_connection_file()
    kc.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
    try:
        msg = kc.session.msg("list_subshell_request", {})
        kc.control_channel.send(msg)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reply = kc.get_control_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return list(reply["content"]["subshell_id"])
        raise AssertionError("no list_subshell_reply within 10 s")
    finally:
        kc.stop_channels()


def _started(cell: Any) -> None:
    """The cell runs: its prompt shows [*]."""
    expect(cell.locator(".jp-InputArea-prompt")).to_have_text(re.compile(r"\[\*\]"), timeout=UI_TIMEOUT)


def test_a_button_stops_a_running_loop(page: Any, lab_server: LabServer, artifacts_dir: Path) -> None:
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
    wait_kernel_idle(page, lab_server)
    cell = run_cell(page, BUTTON)
    wait_cell_done(cell)
    button = page.locator(".jp-OutputArea-output button.widget-button")
    expect(button).to_be_visible(timeout=UI_TIMEOUT)
    shot(page, artifacts_dir, "subshells-button")

    loop = run_cell(page, LOOP)
    _started(loop)
    time.sleep(2.0)  # the loop has run for a while: the click comes during a long cell
    clicked = time.monotonic()
    button.click()
    expect(loop.locator(".jp-OutputArea-output")).to_contain_text("stopped True", timeout=RUN_TIMEOUT)
    seen = time.monotonic() - clicked
    text = output_text(loop)
    shot(page, artifacts_dir, "subshells-stopped")
    print(f"click -> the loop's output in the page: {seen * 1000:.0f} ms; kernel: {text.strip()}")
    ran = float(re.search(r"ran ([\d.]+)", text).group(1))  # type: ignore[union-attr]
    assert ran < 60, text  # stopped by the click, not by the loop's own 90 s bound
    assert seen < 10, f"the click took {seen:.1f} s to stop the loop"

    check = run_cell(page, "%subshell")
    wait_cell_done(check)
    listed = re.search(r"subshell list: \[(.*)\]", output_text(check))
    assert listed and listed.group(1).strip(), output_text(check)  # JupyterLab made the widget subshell


def test_a_subshell_console_runs_beside_the_busy_notebook(page: Any, lab_server: LabServer,
                                                          artifacts_dir: Path) -> None:
    wait_cell_done(run_cell(page, "stop.clear()"))
    loop = run_cell(page, LOOP)
    _started(loop)
    before = subshells_of_the_kernel(lab_server)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+Shift+c")  # the command palette
    palette = page.locator(".lm-CommandPalette-input")
    expect(palette).to_be_visible(timeout=UI_TIMEOUT)
    palette.fill("New Subshell Console for Notebook")
    item = page.locator(".lm-CommandPalette-item", has_text="Subshell Console").first
    expect(item).to_be_visible(timeout=UI_TIMEOUT)
    item.click()
    prompt = page.locator(".jp-CodeConsole-promptCell .cm-content").last
    expect(prompt).to_be_visible(timeout=UI_TIMEOUT)
    # the console asks for its subshell once its session is ready; code typed before
    # that goes to the main shell, behind the loop
    wait_for(lambda: len(subshells_of_the_kernel(lab_server)) > len(before), 30,
             "the console's create_subshell_request")
    prompt.click()
    page.keyboard.type("%subshell")
    page.keyboard.press("Shift+Enter")
    console_out = page.locator(".jp-CodeConsole-content .jp-OutputArea-output")
    expect(console_out.last).to_contain_text("subshell id:", timeout=RUN_TIMEOUT)
    assert "subshell id: None" not in console_out.last.inner_text()
    shot(page, artifacts_dir, "subshells-console")
    prompt = page.locator(".jp-CodeConsole-promptCell .cm-content").last
    prompt.click()
    page.keyboard.type("stop.append(time.monotonic()); print('stopped from the console')")
    page.keyboard.press("Shift+Enter")
    expect(console_out.last).to_contain_text("stopped from the console", timeout=RUN_TIMEOUT)
    expect(loop.locator(".jp-OutputArea-output")).to_contain_text("stopped True", timeout=RUN_TIMEOUT)
    shot(page, artifacts_dir, "subshells-console-stopped")
