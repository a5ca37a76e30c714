#!/usr/bin/env bash
# Make .venv-eg: Jupyter Enterprise Gateway 3.3 in a virtualenv of its own, from
# deploy/enterprise-gateway-requirements.txt (EG pins jupyter_client<7 and pyzmq<25,
# which the project's .venv cannot hold). tests/deploy/test_enterprise_gateway.py runs
# this first; it returns at once when .venv-eg already holds exactly those requirements.
# relaykernel goes in too, editable and without its dependencies: EG imports only its
# process proxy (relaykernel/launch/eg_proxy.py) from it; kernels run from .venv.
# Bounded: pip gets EG_INSTALL_TIMEOUT seconds (default 480), each download 30 s.
# Prints the path of the jupyter-enterprisegateway script on success.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EG_VENV:-.venv-eg}
REQS=deploy/enterprise-gateway-requirements.txt
STAMP="$VENV/.installed-requirements"
WANT=$( (cat "$REQS"; echo "relaykernel editable, no deps") | sha256sum | cut -d' ' -f1)
# One install at a time: deploy/test.sh starts one in the background while the main
# suite runs, and the test may ask before it is done (it then waits for it here).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$VENV.lock"
  flock 9
fi

if [ -x "$VENV/bin/jupyter-enterprisegateway" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
  echo "$PWD/$VENV/bin/jupyter-enterprisegateway"
  exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
if ! timeout "${EG_INSTALL_TIMEOUT:-480}" "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    --timeout 30 --retries 2 -r "$REQS" >&2; then
  echo "deploy/enterprise-gateway.sh: installing $REQS into $VENV failed or timed out" >&2
  exit 1
fi
if ! timeout "${EG_INSTALL_TIMEOUT:-480}" "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    --timeout 30 --retries 2 --no-deps -e . >&2; then
  echo "deploy/enterprise-gateway.sh: installing relaykernel (--no-deps -e .) into $VENV failed" >&2
  exit 1
fi
"$VENV/bin/python" -c "import enterprise_gateway, jupyter_client, relaykernel.launch.eg_proxy; \
print('Enterprise Gateway', enterprise_gateway.__version__, 'on jupyter_client', jupyter_client.__version__)" >&2
echo "$WANT" > "$STAMP"
echo "$PWD/$VENV/bin/jupyter-enterprisegateway"
