#!/usr/bin/env bash
# The k6 load test (tests/load/k6-events.js) against a running stack, e.g.
# `make run` in another terminal. Its settings come from the environment:
# BASE_URL, API_KEY, PEAK_RATE, HOLD (see the script's header).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K6=$(scripts/install-k6.sh)
base=${BASE_URL:-http://localhost:3000}
if ! curl -fsS -o /dev/null "$base/health"; then
    echo "no ingest answering at $base/health: start the stack first (make run)" >&2
    exit 1
fi
K6_NO_USAGE_REPORT=true exec "$K6" run tests/load/k6-events.js
