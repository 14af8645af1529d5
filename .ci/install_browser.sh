#!/usr/bin/env bash
# What tests/test_web_browser.py needs: Debian's Chromium and Playwright's Python package.
#
# The test drives /usr/bin/chromium through Playwright (executable_path), so
# `playwright install` (which downloads its own browser) is never run.
# Idempotent: does nothing when both are already there.
# Usage: .ci/install_browser.sh   (PYTHON=/path/to/python to use another interpreter than .venv's)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PLAYWRIGHT_VERSION="1.65.2"  # the version the browser test was written against

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
fi

if ! "$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('playwright') != '$PLAYWRIGHT_VERSION')" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet "playwright==$PLAYWRIGHT_VERSION"
fi

/usr/bin/chromium --version
"$PYTHON" -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"
