#!/usr/bin/env bash
# Installs libfaketime (Debian's faketime package), which the fleet tests
# preload into a processor to give it a clock of its own: hours ahead, or
# running at half speed. Idempotent.
set -euo pipefail

LIB=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
if [[ -e "$LIB" ]]; then
    exit 0
fi
echo "Installing faketime (libfaketime, for the fleet's clock tests)"
if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && apt-get install -y -qq faketime >/dev/null
else
    sudo apt-get update -qq && sudo apt-get install -y -qq faketime >/dev/null
fi
[[ -e "$LIB" ]] || { echo "faketime installed, but $LIB is missing" >&2; exit 1; }
