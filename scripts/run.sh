#!/usr/bin/env bash
# Runs the whole system locally: a MongoDB-compatible server (SecantusDB,
# installed into .mongo/ on first use, data kept in .mongo/data), the
# processor on :3001 and ingest on :3000. Ctrl-C stops all three.
# Any setting from the README's table can be passed in the environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MONGO_PORT=${MONGO_PORT:-27017}
export MONGO_URI=${MONGO_URI:-mongodb://127.0.0.1:$MONGO_PORT/medical_events}
export LOG_FORMAT=${LOG_FORMAT:-pretty}
# Development credentials (README's curl examples use them); set your own in production.
export INGEST_API_KEYS=${INGEST_API_KEYS:-dev-ingest-key-change-me}
export PROCESSOR_TOKEN=${PROCESSOR_TOKEN:-dev-processor-token-change-me}

cargo build --release --bins --locked
mkdir -p .mongo/data
pids=()
mongo_pid=
cleanup() {
    trap - INT TERM EXIT
    echo "stopping..."
    # Services first (they drain in-flight work), the database last.
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "$mongo_pid" ]]; then
        kill -TERM "$mongo_pid" 2>/dev/null || true
        while kill -0 "$mongo_pid" 2>/dev/null; do sleep 0.2; done
    fi
}
trap cleanup INT TERM EXIT

scripts/start-mongo.sh "$MONGO_PORT" .mongo/data .mongo/secantusd.pid .mongo/secantusd.log
mongo_pid=$(cat .mongo/secantusd.pid)
echo "SecantusDB on 127.0.0.1:$MONGO_PORT (log: .mongo/secantusd.log)"

PORT=${PROCESSOR_PORT:-3001} target/release/processor &
pids+=($!)
PORT=${INGEST_PORT:-3000} PROCESSOR_URL=${PROCESSOR_URL:-http://127.0.0.1:${PROCESSOR_PORT:-3001}} \
    target/release/ingest &
pids+=($!)
echo "ingest on http://localhost:${INGEST_PORT:-3000}, processor on http://localhost:${PROCESSOR_PORT:-3001}; Ctrl-C stops all"
wait -n "${pids[@]}" || true
