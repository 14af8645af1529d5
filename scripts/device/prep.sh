#!/usr/bin/env bash
# Prepare what the lent GPU's calls carry (the device tool: ../.library/device/README.md), in .gpu/ (kept out
# of git through .git/info/exclude). A new checkout has no .gpu/, so run this first in every session that
# will use the GPU; it takes about 3 minutes, most of it compressing the training split.
#
#   .gpu/whl_min     transformers 4.57.6, tokenizers, huggingface_hub 0.36 and fschat 0.2.36 for Python 3.12
#                    (the machine's image has transformers 5): enough to train, distill and benchmark (15 MiB)
#   .gpu/whl_serve   what FastChat's servers add (fastapi, uvicorn, pydantic...): carry it too for the worker
#   .gpu/small_xz    the ShareGPT split (train.json, heldout.json) the `small` reference base trains on
#   .gpu/cllm_xz     its code-domain subsets for CLLM rounds (fastchat_spec.train.domain)
#   .gpu/prompts.jsonl  40 held-out ShareGPT first turns, the tau benchmark's prompts
#
# A call carries at most 64 MiB with the tracked files (28 MiB: benchmarks/raw/ keeps run logs over 20 KB and large
# bench outputs xz-compressed so that this stays true), so whl_min and small_xz fit together.
# The calls of issue 15, in order on one warm machine, sized for an 80 GB H100 (about 20 minutes):
#   1. tau_1.sh  carry .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl            (about 8.5 min)
#   2. tau_2.sh  no carry (METHODS="hydra-pp chimera" HEAD_TIMEOUT=440 for both) (4 to 9.5 min)
#   3. tau_3.sh  carry .gpu/prompts.jsonl, the same METHODS                      (about 3 min)
#   or, with under 15 minutes of device time: tau_nano.sh  carry .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl
#     (every head method on the bundled nano base, about 6 min)
#   then, if device time is left: cllm_small.sh  carry .gpu/cllm_xz (about 6 min, after tau_1.sh)
# After a change to graph capture, streams or the loop: gpu_check_streams.sh  carry .gpu/whl_min (about 8 min).
# The prompt path's cost per new prompt length, before and after eager_attention: first_use.sh  carry .gpu/whl_min
#   .gpu/small_xz .gpu/prompts.jsonl runs/old (about 5 min; the script says how to make runs/old).
# A change to the loop measured on `small`, before and after on the same heads: tau_1.sh and tau_2.sh as above, then
#   tau_fix.sh carry .gpu/prompts.jsonl runs/old (CONCURRENCY=1,8 for concurrent clients; about 6-9 min, with the
#   GPU check), then batch_profile.sh (no carry; a batched step's device time by phase for 1 to 8 rows, ~5 min).
# The row-batched Hydra/Chimera proposers (06119c0) on the nano base, before and after, 1 and 8 clients, then their
#   step profile and the GPU check: rows_nano.sh, PART=1 then PART=2 (about 5 min each; the script says its carry).
# The CLLM context branch (nineteenth session) timed on the GPU, window alone against as served, then the GPU check
#   (which now also covers logprobs requests beside batched ones and --load-8bit): cllm_context.sh  carry
#   .gpu/whl_min .gpu/prompts.jsonl (about 4 min).
# Sampled requests in the batched step (twentieth session): the GPU check (now with the sampled law, 16 at a time),
#   then sampled serving at 1 and 8 clients before and after: sampled_rows.sh  carry .gpu/whl_min .gpu/prompts.jsonl
#   (about 7 min).
# attention_flex.sh (carry .gpu/whl_min) ran its first part in the thirteenth session (BENCHMARKS.md section 1).
# Usage: bash scripts/device/prep.sh   (repo root or anywhere; needs .venv from scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
[ -x $PY ] || bash scripts/setup.sh
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl_min .gpu/whl_serve .gpu/small_xz .gpu/cllm_xz

# The versions installed here (checked together on this stack), as wheels for the machine's Python 3.12.
version() { $PY -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
fetch() {  # fetch DIR NAME...
  local dir=$1; shift
  for name in "$@"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$dir" "$name==$(version "$name")" 2>&1 | grep -v '^WARNING' || true
  done
}
fetch .gpu/whl_min transformers tokenizers huggingface_hub fschat
fetch .gpu/whl_serve fastapi starlette uvicorn pydantic pydantic_core typing_inspection annotated_types annotated_doc \
  opentelemetry-api typing_extensions shortuuid nh3 markdown2 prompt_toolkit wcwidth
[ -d data/sharegpt ] || PYTHONPATH=$PWD $PY -m fastchat_spec.train.data --out-dir data/sharegpt \
  --tokenizer fastchat_spec/models/vicuna-nano --model-max-length 1024
[ -d data/cllm ] || PYTHONPATH=$PWD $PY -m fastchat_spec.train.domain --data_dir data/sharegpt --out_dir data/cllm \
  --domains code --train_limit 4096
for f in train heldout; do xz -T2 -9e -c data/sharegpt/$f.json > .gpu/small_xz/$f.json.xz; done
for f in train_code heldout_code heldout_all; do xz -T2 -9e -c data/cllm/$f.json > .gpu/cllm_xz/$f.json.xz; done
PYTHONPATH=$PWD $PY - <<'PYEOF'
import json
from fastchat_spec.train.data import heldout_first_turns
with open(".gpu/prompts.jsonl", "w") as f:
    for turn in heldout_first_turns(40):
        f.write(json.dumps({"turns": [turn], "category": "sharegpt-heldout"}) + "\n")
PYEOF
tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {printf "%.1f", s / 1048576}')
du -sh .gpu/*
echo "tracked files: $tracked MiB; a call carries at most 64 MiB in all"
