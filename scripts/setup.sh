#!/usr/bin/env bash
# Create .venv (if needed) and install Flux with its test tools into it, and (as root) the
# browser the console's tests drive (scripts/install_browser.sh; FLUX_NO_BROWSER=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e '.[test]'
if [[ -z ${FLUX_NO_BROWSER:-} ]]; then
  ./scripts/install_browser.sh || echo "setup: no browser: tests/test_console_browser.py will fail" >&2
fi
