#!/usr/bin/env bash
# Installs SecantusDB, the MongoDB-wire-compatible server used for local runs
# and tests (MongoDB itself cannot be installed here), into .mongo/venv.
# Idempotent: does nothing when the pinned version is already there.
# GPL-2.0: it always runs as a separate process and is never linked in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VERSION="0.7.0b3"
VENV=.mongo/venv

installed() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("SecantusDB"))' 2>/dev/null
}

if [[ "$(installed || true)" == "$VERSION" && -x "$VENV/bin/secantusd-py" ]]; then
    exit 0
fi
echo "Installing SecantusDB $VERSION into $VENV (about 30 s, once)"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "SecantusDB==$VERSION"
[[ "$(installed)" == "$VERSION" ]] || { echo "SecantusDB install failed" >&2; exit 1; }
