"""The benchmark command of the README still runs and reports validated figures.

Not a performance test: no figure is compared with a target here (targets live
in the benchmark's own table).  It checks the harness works end to end on a
fresh checkout: both kernels start, every measured cell is a number, and the
ratio column is filled.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(400)
def test_quick_benchmark_run_reports_numbers_for_both_kernels(tmp_path):
    out = tmp_path / "bench.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "floor,startup,exec,crash",
         "--no-xpython", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=380)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = out.read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report.splitlines()
            if line.startswith("| ") and not line.startswith("| measurement")}
    for name in ("startup → kernel_info_reply", "execute rt `pass`", "CPU of the launched process"):
        [row] = [line for key, line in rows.items() if key.startswith(name)]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert "n/a" not in cells[1] and "n/a" not in cells[3], row
        assert re.fullmatch(r"[\d.,]+x", cells[5]), row  # relaykernel/ipykernel ratio
    [crash] = [line for key, line in rows.items() if key.startswith("crash reply")]
    assert re.match(r"[\d.,]+$", crash.split(" | ")[1].strip()), crash  # relaykernel recovers
    assert "n/a (kernel died)" in crash  # ipykernel cannot


def test_echo_timeline_instruments_the_current_sources(tmp_path):
    """Every timestamp edit of benchmarks/echo_timeline.py still applies to the
    kernel's sources (it refuses to run otherwise), and the copy imports."""
    from benchmarks import echo_timeline

    root = echo_timeline.instrumented_copy(tmp_path)
    probe = ("import relaykernel.supervisor.loop, relaykernel.worker.main, "
             "relaykernel.worker.kernel, relaykernel._timeline as t; print(t.__file__)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith(str(root))


def test_echo_timeline_takes_each_marks_first_time_within_each_echo():
    from benchmarks.echo_timeline import timeline

    sends = [(1000, 5000), (10_000, 16_000)]
    marks = [(2000, "a"), (2500, "a"), (3000, "b"), (11_000, "a"), (14_000, "b"), (20_000, "b")]
    rows = {tag: (median, count) for median, tag, count in timeline(sends, marks)}
    assert rows["a"] == (1.0, 2)  # (2000-1000, 11000-10000) ns -> 1.0 us median
    assert rows["b"] == (3.0, 2)  # 2.0 and 4.0 us; the mark after the second echo is ignored
    assert rows["client received the echo"] == (5.0, 2)


def test_hot_path_measures_every_step_of_verified_requests():
    from benchmarks.hot_path import measure

    steps = measure(50)  # raises SystemExit if a request is lost, reordered or fails to verify
    assert set(steps) == {"recv_frames", "verify", "encode"}
    assert all(us > 0 for us in steps.values()), steps
