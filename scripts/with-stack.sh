#!/usr/bin/env bash
# Runs a command against a locally started stack: processor + ingest (already
# built, $PROFILE_DIR, default target/debug) on free ports, on a fresh
# database of the MongoDB at $MONGO_BASE_URI. The command sees INGEST_URL,
# PROCESSOR_URL and API_KEY. Both services stop when it ends.
#   MONGO_BASE_URI=mongodb://127.0.0.1:27017 scripts/with-stack.sh k6 run ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${MONGO_BASE_URI:?set MONGO_BASE_URI, e.g. mongodb://127.0.0.1:27017}"
PROFILE_DIR=${PROFILE_DIR:-target/debug}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
processor_port=$(free_port)
ingest_port=$(free_port)
processor_metrics=$(free_port)
ingest_metrics=$(free_port)
name=stack_$(date +%s)_$$
mkdir -p target/test-logs
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

export MONGO_URI="$MONGO_BASE_URI/$name"
export INGEST_API_KEYS=stack:stack-api-key-0123456789 PROCESSOR_TOKEN=stack-processor-token-0123456789
export DEV_MODE=true
export PROCESSING_MIN_MS=${PROCESSING_MIN_MS:-50} PROCESSING_MAX_MS=${PROCESSING_MAX_MS:-100}
export RUST_LOG=${RUST_LOG:-warn}
PORT=$processor_port METRICS_PORT=$processor_metrics "$PROFILE_DIR/processor" >"target/test-logs/$name-processor.log" 2>&1 &
pids+=($!)
PORT=$ingest_port METRICS_PORT=$ingest_metrics PROCESSOR_URL=http://127.0.0.1:$processor_port "$PROFILE_DIR/ingest" \
    >"target/test-logs/$name-ingest.log" 2>&1 &
pids+=($!)
for port in "$processor_port" "$ingest_port"; do
    for _ in $(seq 1 150); do
        PORT=$port "$PROFILE_DIR/ingest" healthcheck && break
        sleep 0.2
    done
done

export INGEST_URL=http://127.0.0.1:$ingest_port PROCESSOR_URL=http://127.0.0.1:$processor_port
export API_KEY=stack-api-key-0123456789
"$@"
