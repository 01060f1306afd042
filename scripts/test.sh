#!/usr/bin/env bash
# Set up, then lint and run the whole test suite (unit, property, real-process tests).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check flux tests examples bench
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
