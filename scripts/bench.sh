#!/usr/bin/env bash
# The benchmark command (`make bench`): installs what it needs on first use,
# builds the release binaries and runs scripts/bench.py (20-30 minutes
# with the 10-minute soak; BENCH_SECTIONS picks sections).
#   - secantusd-rs, SecantusDB's compiled server (cmake from Debian, then
#     `cargo install`, about 7 minutes once on 2 cores)
#   - wrk (Debian package)
#   - matplotlib for the plot, in .tools/bench-venv
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_install() {
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && apt-get install -y -qq "$@"
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq "$@"
    fi
}

# bench.py looks for secantusd-rs in .tools/secantus-rs/bin, then on PATH,
# then in ~/.cargo/bin; a missing one is installed into .tools/secantus-rs.
export PATH="$HOME/.cargo/bin:$PATH"
if [[ ! -x .tools/secantus-rs/bin/secantusd-rs ]] && ! command -v secantusd-rs >/dev/null; then
    command -v cmake >/dev/null || apt_install cmake
    echo "Installing secantusd-rs (about 7 minutes, once)"
    cargo install secantus-mdb --version 0.5.3-beta.193 --locked --ignore-rust-version \
        --root .tools/secantus-rs
fi
command -v wrk >/dev/null || apt_install wrk

VENV=.tools/bench-venv
if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "matplotlib==3.9.2"
fi

cargo build --release --locked -p ingest -p processor -p loadgen
exec "$VENV/bin/python" scripts/bench.py
