"""The code base passes ruff and mypy with the project's configuration (pyproject.toml).

Deliberate exceptions (handlers that catch everything because a kernel must
survive any user code) are listed per file there, each with its reason.  The last
tests check that the configuration enforces what it claims: the line length, and
mypy's refusal of unannotated functions and of stale ``type: ignore`` comments.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the test environment runs 3.11
    import tomli as tomllib

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


def _ruff_on(source: str) -> str:
    """What ruff, with the project's configuration, says about ``source`` as a package module."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                             "--stdin-filename", "relaykernel/_lint_probe.py", "-"], input=source, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def _mypy_on(source: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", "/dev/null",
                             "-c", source], cwd=REPO, capture_output=True, text=True, timeout=120)
    return result.stdout + result.stderr


def test_line_length_is_enforced() -> None:
    line_length = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["line-length"]
    fits = f"X = {'1' * (line_length - 4)}\n"
    assert len(fits) == line_length + 1
    assert "E501" not in _ruff_on(fits)
    assert "E501" in _ruff_on(f"X = {'1' * (line_length - 3)}\n")


def test_mypy_refuses_untyped_defs_and_unused_ignores() -> None:
    assert "no-untyped-def" in _mypy_on("def double(x):\n    return 2 * x\n")
    assert "unused-ignore" in _mypy_on("X: int = 1  # type: ignore[assignment]\n")
    assert "Success" in _mypy_on("def double(x: int) -> int:\n    return 2 * x\n")
