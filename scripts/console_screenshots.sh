#!/usr/bin/env bash
# Regenerate the console's screenshots in docs/console/ (docs/console.md shows them): runs the
# browser tests, which save a PNG of each page they visit when FLUX_CONSOLE_SCREENSHOTS is set.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_browser.sh
FLUX_CONSOLE_SCREENSHOTS="$PWD/docs/console" \
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_console_browser.py tests/test_console_retry_browser.py "$@"
ls -1 docs/console/*.png
