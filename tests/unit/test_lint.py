"""The code base passes ruff with the project's configuration (pyproject.toml).

Deliberate exceptions (handlers that catch everything because a kernel must
survive any user code) are listed per file there, each with its reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "relaykernel",
                             "benchmarks", "tests"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
