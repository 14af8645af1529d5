#!/usr/bin/env bash
# The `small` reference base served under concurrent load, over two GPU calls on one warm machine:
#   1. the small base as the pipeline trains it (fastchat_spec.train.base --size small, 104M parameters),
#      on the bundled model's tokenizer;
#   2. Medusa-1 heads trained briefly on ShareGPT's own answers (not self-distilled: quicker, lower tau
#      than the pipeline's heads);
#   3. scripts/serving_bench.sh on them: FastChat's controller, worker and API server, levels of
#      concurrent clients, every answer checked against its sequential one.
#
# Usage: bash scripts/small_serving.sh DATA_DIR RUN_DIR OUT_DIR
#   DATA_DIR holds train.json and heldout.json from
#     python -m fastchat_spec.train.data --out-dir DATA_DIR --tokenizer fastchat_spec/models/vicuna-nano \
#       --model-max-length 1024
# Environment: SIZE [small] (tiny for a CPU smoke run), BASE_ARGS [] extra flags for the base (e.g.
#   "--max_steps 400"), HEAD_STEPS [300], STAGES ["base heads serving"] the stages to run (on an H100 on
#   2026-12-06, "base heads" took 5.5 min and "serving" 6 min at LEVELS=1,16 with 1,000 reliability
#   requests: run "base heads" into a RUN_DIR under the ignored runs/, then "serving" on the same warm
#   machine as the next call), and serving_bench.sh's own (LEVELS, REQUESTS, LOAD_ARGS, ...).
# Logs: RUN_DIR/{base,heads}.log; the serving figures: OUT_DIR/summary.json and the load runs' JSON.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=$1 RUN=$2 OUT=$3
PY=${PYTHON:-python3}
SIZE=${SIZE:-small}
mkdir -p "$RUN" "$OUT"
STAGES=${STAGES:-base heads serving}
step() { echo "small_serving.sh: $1 $(date +%T)" >&2; }
wanted() { [[ " $STAGES " == *" $1 "* ]]; }

if wanted base; then
    step "base ($SIZE)"
    # shellcheck disable=SC2086  # BASE_ARGS is a list of flags
    "$PY" -m fastchat_spec.train.base --size "$SIZE" --tokenizer "$ROOT/fastchat_spec/models/vicuna-nano" \
        --data_path "$DATA/train.json" --eval_data_path "$DATA/heldout.json" --output_dir "$RUN/vicuna-$SIZE" \
        --disable_tqdm True ${BASE_ARGS:-} >"$RUN/base.log" 2>&1 || { tail -30 "$RUN/base.log"; exit 1; }
    tail -1 "$RUN/base.log" >&2
fi

if wanted heads; then
    step "Medusa-1 heads"
    "$PY" -m fastchat_spec.train.medusa --model_name_or_path "$RUN/vicuna-$SIZE" \
        --output_dir "$RUN/medusa1-vicuna-$SIZE" --medusa_num_heads 4 --medusa_num_layers 1 \
        --data_path "$DATA/train.json" --eval_data_path "$DATA/heldout.json" --per_device_train_batch_size 16 \
        --max_steps "${HEAD_STEPS:-300}" --learning_rate 1e-3 --model_max_length 1024 --logging_steps 50 \
        --disable_tqdm True >"$RUN/heads.log" 2>&1 || { tail -30 "$RUN/heads.log"; exit 1; }
fi

if wanted serving; then
    step "serving"
    bash "$ROOT/scripts/serving_bench.sh" "$RUN/medusa1-vicuna-$SIZE" "$RUN/vicuna-$SIZE" "$OUT"
fi
