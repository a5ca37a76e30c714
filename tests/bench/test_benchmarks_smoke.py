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
