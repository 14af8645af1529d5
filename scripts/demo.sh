#!/usr/bin/env bash
# Set up and run the main job: FastChat controller + model worker on the bundled
# model, and the speed-showing chat UI. Open the printed URL; Ctrl-C stops it all.
# Everything listens on 127.0.0.1 (pass --host 0.0.0.0 to expose the UI itself).
# Usage: bash scripts/demo.sh [--device cpu|cuda] [--port 7860] [--model-path PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh web,train
. .venv/bin/activate
# exec: the launcher takes this shell's place, so Ctrl-C and SIGTERM reach it directly
# and it stops every process it started (tests/test_launcher.py checks this script).
exec python -m fastchat_spec.web.launch "$@"
