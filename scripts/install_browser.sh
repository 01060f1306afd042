#!/usr/bin/env bash
# Install the browser the console's tests drive: Debian's chromium and chromium-driver.
# Idempotent and quick when both are there; needs root (or sudo) to install. Without them the
# browser tests (tests/test_console_browser.py) fail, they never skip.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "install_browser: chromium and chromium-driver are missing and this is not root:" >&2
  echo "  apt-get install -y chromium chromium-driver   (as root)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null
