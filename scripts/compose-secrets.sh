#!/usr/bin/env bash
# Writes .env (read by docker compose) with random credentials for every
# secret docker-compose.yml requires, keeping any already there. Prints
# where to find them; never prints the secrets themselves.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

touch .env
chmod 600 .env
random() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
add() {
    local name=$1 value=$2
    if ! grep -q "^$name=" .env; then
        echo "$name=$value" >>.env
        echo "generated $name"
    fi
}
add INGEST_API_KEYS "dev:$(random)"
add ADMIN_API_KEYS "operator:$(random)"
add PROCESSOR_TOKEN "$(random)"
add GRAFANA_ADMIN_PASSWORD "$(random)"
echo "credentials are in .env (client dev's key: INGEST_API_KEYS after 'dev:')"
