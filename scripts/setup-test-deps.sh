#!/usr/bin/env bash
# Installs what the real-client test suites need, idempotently: a virtualenv in .venv with the
# pinned Python clients (tests/compat/requirements.txt). Quick when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
req=tests/compat/requirements.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
