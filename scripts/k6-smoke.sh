#!/usr/bin/env bash
# A 10-second k6 smoke of tests/load/k6-events.js against a locally started
# stack (scripts/with-stack.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K6=$(scripts/install-k6.sh)
# shellcheck disable=SC2016 # expanded by the inner shell, after with-stack.sh set them
scripts/with-stack.sh bash -c 'K6_NO_USAGE_REPORT=true SMOKE=1 BASE_URL=$INGEST_URL \
    '"$K6"' run --quiet --no-color tests/load/k6-events.js'
