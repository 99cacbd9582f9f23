#!/usr/bin/env bash
# Runs the whole system locally: a MongoDB-compatible server (SecantusDB's
# compiled server, built into .tools/ on first use, about 4 minutes once;
# data kept in .mongo/data-compiled), the processor on :3001 and ingest on
# :3000. Ctrl-C stops all three. Any setting from the README's table can be
# passed in the environment; LOCAL_MONGO=python uses the Python server instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MONGO_PORT=${MONGO_PORT:-27017}
export MONGO_URI=${MONGO_URI:-mongodb://127.0.0.1:$MONGO_PORT/medical_events}
export LOG_FORMAT=${LOG_FORMAT:-pretty}
# Development credentials (README's curl examples use them); set your own in
# production. DEV_MODE=true lets the services accept them (each warns at start).
export DEV_MODE=${DEV_MODE:-true}
export INGEST_API_KEYS=${INGEST_API_KEYS:-dev:dev-ingest-key-change-me}
export ADMIN_API_KEYS=${ADMIN_API_KEYS:-operator:dev-admin-key-change-me}
export PROCESSOR_TOKEN=${PROCESSOR_TOKEN:-dev-processor-token-change-me}
# HL7 v2 over MLLP for client dev, on loopback only (MLLP has no credentials).
export MLLP_LISTENERS=${MLLP_LISTENERS:-dev@127.0.0.1:2575}
# make run serves one person on one machine: the metrics listeners stay on
# their defaults (9464 ingest, 9465 processor).
LOCAL_MONGO=${LOCAL_MONGO:-compiled}
DATA=.mongo/data-$LOCAL_MONGO

cargo build --release --bins --locked
mkdir -p "$DATA"
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

scripts/start-mongo.sh "$MONGO_PORT" "$DATA" .mongo/secantusd.pid .mongo/secantusd.log "$LOCAL_MONGO"
mongo_pid=$(cat .mongo/secantusd.pid)
echo "SecantusDB ($LOCAL_MONGO) on 127.0.0.1:$MONGO_PORT, data in $DATA (log: .mongo/secantusd.log)"

PORT=${PROCESSOR_PORT:-3001} target/release/processor &
pids+=($!)
PORT=${INGEST_PORT:-3000} PROCESSOR_URL=${PROCESSOR_URL:-http://127.0.0.1:${PROCESSOR_PORT:-3001}} \
    target/release/ingest &
pids+=($!)
echo "ingest on http://localhost:${INGEST_PORT:-3000} (HL7 over MLLP: $MLLP_LISTENERS), processor on http://localhost:${PROCESSOR_PORT:-3001}; Ctrl-C stops all"
wait -n "${pids[@]}" || true
