#!/usr/bin/env bash
# Installs SecantusDB's compiled server (secantusd-rs, crates.io secantus-mdb),
# the MongoDB-wire-compatible server `make run` and `make bench` use, into
# .tools/secantus-rs. Idempotent: does nothing when the pinned version is
# there. First run: about 4 minutes on 2 cores (cmake from Debian if missing,
# then a cargo build); afterwards instant.
# GPL-2.0: it always runs as a separate process and is never linked in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VERSION="0.5.3-beta.193"
ROOT=.tools/secantus-rs
BIN=$ROOT/bin/secantusd-rs
STAMP=$ROOT/.version

if [[ -x "$BIN" && "$(cat "$STAMP" 2>/dev/null)" == "$VERSION" ]]; then
    exit 0
fi
if ! command -v cmake >/dev/null; then
    echo "Installing cmake (needed to build secantusd-rs)"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && apt-get install -y -qq cmake >/dev/null
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq cmake >/dev/null
    fi
fi
echo "Building secantusd-rs $VERSION into $ROOT (about 4 minutes, once)"
cargo install secantus-mdb --version "$VERSION" --locked --ignore-rust-version \
    --root "$ROOT" --quiet
echo "$VERSION" >"$STAMP"
