#!/usr/bin/env bash
# Starts a SecantusDB server in the background and waits for its port.
#   scripts/start-mongo.sh PORT STORAGE_PATH PIDFILE [LOGFILE]
# STORAGE_PATH may be ':memory:' for a throwaway store.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

port=$1 storage=$2 pidfile=$3 log=${4:-/dev/null}
scripts/install-mongo.sh
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use: stop what runs there or choose another port" >&2
    exit 1
fi
[[ "$storage" == ":memory:" ]] || mkdir -p "$storage"
# --sync-on-commit: a write acknowledged as journaled is on disk, as on MongoDB.
# Own session: a Ctrl-C in the terminal reaches the services, and the caller
# stops the database after them.
setsid .mongo/venv/bin/secantusd-py --host 127.0.0.1 --port "$port" --storage-path "$storage" \
    --log-level WARNING --sync-on-commit >"$log" 2>&1 &
echo $! >"$pidfile"
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        exit 0
    fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "SecantusDB exited; see $log" >&2; exit 1; }
    sleep 0.2
done
echo "SecantusDB did not open port $port within 20 s; see $log" >&2
exit 1
