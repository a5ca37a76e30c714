"""The code base passes ruff and mypy with the project's configuration (pyproject.toml).

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


def test_mypy_finds_nothing() -> None:
    """The package's annotations agree with its code (mypy's cache off, so a stale one cannot hide an error)."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", "/dev/null",
                             "relaykernel"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
