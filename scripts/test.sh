#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit/integration/end-to-end
# tests against a real MongoDB-compatible server, and the packaging checks.
# Installs what it needs (SecantusDB, packaging tools) on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --tests --locked

step "database"
mkdir -p target/test-mongo
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pidfile=target/test-mongo/shared.pid
scripts/start-mongo.sh "$port" ":memory:" "$pidfile" target/test-mongo/shared.log
trap 'kill "$(cat "$pidfile")" 2>/dev/null || true' EXIT
export TEST_MONGO_URI="mongodb://127.0.0.1:$port"
echo "SecantusDB on $TEST_MONGO_URI"

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

step "load smoke (k6, 10 s)"
MONGO_BASE_URI=$TEST_MONGO_URI scripts/k6-smoke.sh

step "API contract (schemathesis)"
MONGO_BASE_URI=$TEST_MONGO_URI scripts/api-contract.sh

step "packaging"
scripts/check-packaging.sh
