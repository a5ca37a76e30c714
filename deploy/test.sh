#!/usr/bin/env bash
# Run the whole relaykernel test suite from a fresh clone (sets up first).
# pytest's exit code 5 ("no tests collected") is a failure here, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh || exit 1
.venv/bin/python -m pytest tests "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "deploy/test.sh: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$status"
