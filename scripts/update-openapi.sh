#!/usr/bin/env bash
# Regenerates the committed OpenAPI documents from the code.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --bins --locked
mkdir -p docs/openapi
target/debug/ingest openapi >docs/openapi/ingest.json
target/debug/processor openapi >docs/openapi/processor.json
echo "updated docs/openapi/ingest.json and docs/openapi/processor.json"
