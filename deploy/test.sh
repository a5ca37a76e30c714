#!/usr/bin/env bash
# Run the whole relaykernel test suite from a fresh clone (sets up first).
# pytest's exit code 5 ("no tests collected") is a failure here, not a pass.
#
# tests/deploy runs in a pytest process of its own: gateway_provisioners'
# DistributedProvisioner, which those tests run in-process, leaves its response
# manager in the process, and the kernel clients of later tests then crawl
# (pipelined comm echoes fell from ~2,500/s to ~30/s). With arguments, one
# pytest run takes them as they are.
set -uo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh || exit 1

run_pytest() {
  .venv/bin/python -m pytest "$@"
  local status=$?
  if [ "$status" -eq 5 ]; then
    echo "deploy/test.sh: pytest collected no tests in: $*; failing" >&2
    return 1
  fi
  return "$status"
}

if [ "$#" -gt 0 ]; then
  run_pytest "$@"
  exit $?
fi
# Enterprise Gateway's own venv (~45 s of pip on a fresh clone) is built while the main
# suite runs; tests/deploy/test_enterprise_gateway.py runs the same script, which then
# returns at once (or waits for this one: it holds a lock) and reports any failure.
bash deploy/enterprise-gateway.sh >/dev/null 2>&1 &
eg_prefetch=$!
# Two pytest workers (RELAYKERNEL_TEST_WORKERS): the suite mostly waits on the kernels
# it starts (4:47 of CPU in 8:27 on one worker), and two halve the wall time on a
# 2-core machine.  A file's tests stay on one worker (--dist loadfile): they share
# module fixtures (a JupyterLab server, kernelspecs) and run in their written order.
run_pytest tests --ignore=tests/deploy -n "${RELAYKERNEL_TEST_WORKERS:-2}" --dist loadfile
main_status=$?
wait "$eg_prefetch" || true
run_pytest tests/deploy
deploy_status=$?
[ "$main_status" -eq 0 ] && [ "$deploy_status" -eq 0 ]
