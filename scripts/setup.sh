#!/usr/bin/env bash
# Create ./.venv with everything fastchat-spec needs (CPU build of torch on these machines).
# Usage: bash scripts/setup.sh [extras]   (default extras: web,train)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-web,train}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: a bare "torch" requirement would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
# Non-editable on purpose: the import hook is a .pth file at the root of site-packages.
python -m pip install -q ".[$extras]"
rm -rf build ./*.egg-info
python -c "import fastchat, transformers, torch; print('fastchat-spec ready: torch', torch.__version__, '| transformers', transformers.__version__, '| fschat', fastchat.__version__)"
