#!/usr/bin/env bash
# Set up, then run the hello-world workflow embedded (no server): the store goes to a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export FLUX_DB=${FLUX_DB:-$(mktemp -d)/flux.db}
.venv/bin/python examples/hello_world.py
