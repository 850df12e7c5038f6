#!/usr/bin/env bash
# Installs what the real-client test suites need, idempotently: kcat, chromium and
# chromium-driver from Debian, and a
# virtualenv in .venv with the pinned Python clients (tests/compat/requirements.txt). Quick when
# already done.
set -euo pipefail
cd "$(dirname "$0")/.."
# kcat for the Kafka suites; Debian's chromium + chromium-driver for the console's browser test
missing=()
command -v kcat >/dev/null || missing+=(kcat)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
req=tests/compat/requirements.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
