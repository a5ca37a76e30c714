#!/usr/bin/env bash
# Make .venv-eg: Jupyter Enterprise Gateway 3.3 in a virtualenv of its own, from
# deploy/enterprise-gateway-requirements.txt (EG pins jupyter_client<7 and pyzmq<25,
# which the project's .venv cannot hold). tests/deploy/test_enterprise_gateway.py runs
# this first; it returns at once when .venv-eg already holds exactly those requirements.
# Bounded: pip gets EG_INSTALL_TIMEOUT seconds (default 480), each download 30 s.
# Prints the path of the jupyter-enterprisegateway script on success.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EG_VENV:-.venv-eg}
REQS=deploy/enterprise-gateway-requirements.txt
STAMP="$VENV/.installed-requirements"
WANT=$(sha256sum "$REQS" | cut -d' ' -f1)

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
"$VENV/bin/python" -c "import enterprise_gateway, jupyter_client; print('Enterprise Gateway', \
enterprise_gateway.__version__, 'on jupyter_client', jupyter_client.__version__)" >&2
echo "$WANT" > "$STAMP"
echo "$PWD/$VENV/bin/jupyter-enterprisegateway"
