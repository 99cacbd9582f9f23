#!/usr/bin/env bash
# Starts a SecantusDB server (MongoDB wire protocol, WiredTiger storage) in
# the background and waits for its port.
#   scripts/start-mongo.sh PORT STORAGE_PATH PIDFILE [LOGFILE] [compiled|python]
# compiled (default): secantusd-rs, built into .tools/secantus-rs on first use
#   (about 4 minutes once); the server make run and make bench use.
# python: secantusd-py from PyPI, installed into .mongo/venv (about 30 s);
#   the test suite's server. STORAGE_PATH may be ':memory:' for it.
# Both run with --sync-on-commit on disk: a write acknowledged as journaled
# is on disk, as on MongoDB. A new compiled store is created with
# --data-nonlogged, as mongod in a replica set: only the oplog is journaled,
# and a start after a crash replays it from the last checkpoint (each write
# logged once; every acknowledged write still survives kill -9:
# tests/e2e/resilience.rs). Only a new one: the server records the mode at a
# store's first start, but a store made with full journaling has no record,
# and switching it over would be unsafe after a crash (crates/stack's
# Storage::is_new says the same).
# The compiled server's cache is MONGO_CACHE_SIZE, by default the stack
# crate's DEFAULT_CACHE_SIZE (crates/stack/src/database.rs says why 2G).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

port=$1 storage=$2 pidfile=$3 log=${4:-/dev/null} kind=${5:-compiled}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use: stop what runs there or choose another port" >&2
    exit 1
fi
# Own session: a Ctrl-C in the terminal reaches the services, and the caller
# stops the database after them.
case "$kind" in
    compiled)
        scripts/install-secantus-rs.sh
        mode=()
        if [[ ! -d "$storage" || -z "$(ls -A "$storage")" ]]; then mode=(--data-nonlogged); fi
        mkdir -p "$storage"
        cache=${MONGO_CACHE_SIZE:-$(sed -n 's/^pub const DEFAULT_CACHE_SIZE: &str = "\(.*\)";$/\1/p' \
            crates/stack/src/database.rs)}
        # Either variable would let the server acknowledge a write before its
        # oplog entry is durable, which the replay after a crash relies on.
        env -u SECANTUS_OPLOG_ASYNC -u SECANTUS_OPLOG_NONLOGGED \
            setsid .tools/secantus-rs/bin/secantusd-rs --host 127.0.0.1 --port "$port" \
            --storage-path "$storage" --cache-size "${cache:?no DEFAULT_CACHE_SIZE in crates/stack/src/database.rs}" \
            --log-file-max 32MB --log-level WARNING --sync-on-commit "${mode[@]}" >"$log" 2>&1 &
        ;;
    python)
        scripts/install-mongo.sh
        sync=(--sync-on-commit)
        # A store in memory has no disk to sync to; the flag would only slow it.
        if [[ "$storage" == ":memory:" ]]; then sync=(); else mkdir -p "$storage"; fi
        setsid .mongo/venv/bin/secantusd-py --host 127.0.0.1 --port "$port" --storage-path "$storage" \
            --log-level WARNING "${sync[@]}" >"$log" 2>&1 &
        ;;
    *)
        echo "unknown server kind $kind (compiled or python)" >&2
        exit 2
        ;;
esac
echo $! >"$pidfile"
for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        exit 0
    fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "SecantusDB exited; see $log" >&2; exit 1; }
    sleep 0.2
done
echo "SecantusDB did not open port $port within 30 s; see $log" >&2
exit 1
