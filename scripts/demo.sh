#!/usr/bin/env bash
# Set up and run the main job: FastChat controller + model worker on the bundled
# model, and the speed-showing chat UI. Open the printed URL.
# Usage: bash scripts/demo.sh [--device cpu|cuda] [--port 7860] [--model-path PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh web,train
. .venv/bin/activate
exec python -m fastchat_spec.web.launch "$@"
