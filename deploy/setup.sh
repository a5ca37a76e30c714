#!/usr/bin/env bash
# Set up relaykernel from a fresh clone: a virtualenv in .venv with the kernel,
# its test and benchmark dependencies, and the kernelspec installed into it.
# Needs only Python >= 3.10 and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,bench]'
# The kernelspec goes into the venv, so `jupyter console --kernel relaykernel`
# from .venv/bin finds it without touching the user's own Jupyter setup.
.venv/bin/python -m relaykernel install --sys-prefix
