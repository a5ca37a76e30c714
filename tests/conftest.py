"""Session-wide test configuration for relaykernel.

The kernel under test is selected with the environment variable
``RELAYKERNEL_TEST_KERNEL``:

* ``relaykernel`` (default): ``python -m relaykernel -f {connection_file}``
* ``ipykernel``: ``python -m ipykernel_launcher -f {connection_file}``

Either way the kernelspec is installed under the name ``relaykernel`` (plus a
``relaykernel-msg`` variant with ``interrupt_mode: message``) in a temporary
directory that ``JUPYTER_PATH`` points at, so tests never depend on which
implementation runs.  ``JUPYTER_DATA_DIR``, ``JUPYTER_RUNTIME_DIR``,
``JUPYTER_CONFIG_DIR`` and ``IPYTHONDIR`` are temporary too, which isolates the
tests (and the kernels they start, which inherit the environment) from the
user's configuration and history.

The environment is set up in ``pytest_configure`` -- i.e. before collection and
before any ``unittest`` ``setUpClass`` (jupyter_kernel_test) runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.helpers import (
    IS_IPYKERNEL,
    KERNEL_NAME,
    KERNEL_NAME_MSG_INTERRUPT,
    TEST_KERNEL,
    KernelHandle,
    start_kernel,
    stop_kernel,
)

if TEST_KERNEL not in ("relaykernel", "ipykernel"):
    raise pytest.UsageError(
        f"RELAYKERNEL_TEST_KERNEL must be 'relaykernel' or 'ipykernel', got {TEST_KERNEL!r}"
    )

_ENV_VARS = (
    "JUPYTER_PATH",
    "JUPYTER_DATA_DIR",
    "JUPYTER_RUNTIME_DIR",
    "JUPYTER_CONFIG_DIR",
    "IPYTHONDIR",
    "JUPYTER_PLATFORM_DIRS",
)
_saved_env: dict[str, str | None] = {}
_session_root: Path | None = None


def kernel_argv() -> list[str]:
    if IS_IPYKERNEL:
        return [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    return [sys.executable, "-m", "relaykernel", "-f", "{connection_file}"]


def _write_spec(kernels_dir: Path, name: str, interrupt_mode: str) -> None:
    spec_dir = kernels_dir / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": kernel_argv(),
        "display_name": f"relaykernel tests ({TEST_KERNEL}, interrupt={interrupt_mode})",
        "language": "python",
        "interrupt_mode": interrupt_mode,
        # as the installed spec (and ipykernel's): tests may ask for CurveZMQ
        "metadata": {"debugger": False, "supported_encryption": ["curve"]},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=2))


def pytest_configure(config: pytest.Config) -> None:
    global _session_root
    root = Path(tempfile.mkdtemp(prefix="relaykernel-tests-"))
    _session_root = root
    dirs = {
        "JUPYTER_PATH": root / "jupyter_path",
        "JUPYTER_DATA_DIR": root / "jupyter_data",
        "JUPYTER_RUNTIME_DIR": root / "jupyter_runtime",
        "JUPYTER_CONFIG_DIR": root / "jupyter_config",
        "IPYTHONDIR": root / "ipython",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    kernels_dir = dirs["JUPYTER_PATH"] / "kernels"
    _write_spec(kernels_dir, KERNEL_NAME, "signal")
    _write_spec(kernels_dir, KERNEL_NAME_MSG_INTERRUPT, "message")

    for var in _ENV_VARS:
        _saved_env[var] = os.environ.get(var)
    for var, d in dirs.items():
        os.environ[var] = str(d)
    # Keep jupyter_core on its classic (non-platformdirs) layout: deterministic.
    os.environ.pop("JUPYTER_PLATFORM_DIRS", None)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"kernel under test: {TEST_KERNEL} (RELAYKERNEL_TEST_KERNEL)",
        f"kernel argv: {kernel_argv()}",
        f"JUPYTER_PATH: {os.environ.get('JUPYTER_PATH')}",
    ]


def pytest_unconfigure(config: pytest.Config) -> None:
    for var, value in _saved_env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    if _session_root is not None:
        shutil.rmtree(_session_root, ignore_errors=True)


@pytest.fixture(scope="session")
def test_kernel_impl() -> str:
    """'relaykernel' or 'ipykernel'."""
    return TEST_KERNEL


@pytest.fixture(scope="session")
def session_tmp_root() -> Path:
    assert _session_root is not None
    return _session_root


@pytest.fixture
def kernel() -> Iterator[KernelHandle]:
    """A fresh kernel (kernelspec 'relaykernel') with a started, ready client.

    Torn down with shutdown_kernel(now=False) (bounded wait); any process of the
    kernel's tree recorded at start or end that survives is SIGKILLed by pid.
    """
    handle = start_kernel(KERNEL_NAME)
    try:
        yield handle
    finally:
        stop_kernel(handle)
