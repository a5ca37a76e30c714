"""Magics notebook users have under ipykernel: %store, %clear, %less/%more, %autosave.

A missing magic is a UsageError, which with stop_on_error also aborts every
cell queued behind it (Run All).  Runs on both kernels.
"""

from __future__ import annotations

from tests.kernel.helpers import IS_IPYKERNEL, evaluate, execute_ok, of_type, stream_text


def test_store_keeps_a_variable_across_restarts_of_the_namespace(kernel, tmp_path):
    kc = kernel.kc
    _, iopub = execute_ok(kc, "stored_value = 42\n%store stored_value")
    assert "Stored 'stored_value'" in stream_text(iopub, "stdout")
    execute_ok(kc, "del stored_value\n%store -r stored_value")
    assert evaluate(kc, "stored_value") == "42"
    execute_ok(kc, "%store -d stored_value")


def test_clear_clears_the_output_area(kernel):
    _, iopub = execute_ok(kernel.kc, "print('before')\n%clear")
    if not IS_IPYKERNEL:  # ipykernel runs the terminal's `clear`, which a notebook cannot show
        assert of_type(iopub, "clear_output")


def test_less_and_more_page_a_file(kernel, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("paged text\n")
    for magic in ("less", "more"):
        reply, _ = execute_ok(kernel.kc, f"%{magic} {path}")
        pages = [p for p in reply["content"]["payload"] if p.get("source") == "page"]
        assert pages and "paged text" in pages[0]["data"]["text/plain"], reply["content"]["payload"]


def test_autosave_asks_the_frontend(kernel):
    _, iopub = execute_ok(kernel.kc, "%autosave 0")
    scripts = [m for m in of_type(iopub, "display_data")
               if "application/javascript" in m["content"]["data"]]
    assert scripts and "set_autosave_interval(0)" in scripts[0]["content"]["data"]["application/javascript"]


def test_guis_that_need_no_event_loop_are_accepted(kernel):
    """%gui asyncio (the loop already runs) and matplotlib's notebook backend, drawn by
    the frontend over a comm, work as under ipykernel."""
    _, iopub = execute_ok(kernel.kc, "%gui asyncio")
    assert stream_text(iopub, "stderr") == ""
    _, iopub = execute_ok(kernel.kc, "%matplotlib notebook\nimport matplotlib.pyplot as plt\n"
                                     "plt.plot([1, 2])\nplt.show()", timeout=60)
    assert any(m["content"].get("target_name") == "matplotlib" for m in of_type(iopub, "comm_open"))
    execute_ok(kernel.kc, "plt.close('all')\n%matplotlib inline")
