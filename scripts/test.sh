#!/usr/bin/env bash
# Set up (venv, packages, headless Chromium) and run the whole test suite on CPU.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash .ci/install_browser.sh
. .venv/bin/activate
mkdir -p artifacts
python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 "$@" tests
