#!/usr/bin/env bash
# The whole reference recipe on one GPU, start to finish:
#   ShareGPT -> tokenizer -> nano and small Vicuna-style bases -> draft heads for every
#   method (Medusa-1, Medusa-2, Hydra, Hydra++, Chimera, CLLM) -> benchmarks.
# Every stage logs to $RUN/<stage>.log and appends "rc" lines to $RUN/stages.log.
# Independent trainings run at the same time on the one GPU (they are small).
#
# Usage: bash scripts/gpu_pipeline.sh            (on a CUDA machine, repo root)
#        SMOKE=1 bash scripts/gpu_pipeline.sh    (CPU, minutes: tiny sizes and a few steps)
set -u
RUN=${RUN:-runs/pipeline}
DATA=$RUN/data
mkdir -p "$RUN" "$DATA"
PY=${PYTHON:-python3}

if [ "${SMOKE:-0}" = "1" ]; then
  NANO=tiny SMALL=tiny LIMIT="--limit 300" VOCAB=1000 BASE_STEPS="--max_steps 4" HEAD_STEPS=4 NANO_HEAD_STEPS=4
  NANO_DISTILL=16 SMALL_DISTILL=16
  BENCH="--num-prompts 3 --max-new-tokens 32 --baselines fastchat,ar --dtype float32" CLLM_PROMPTS=8
else
  NANO=nano SMALL=small LIMIT="" VOCAB=8000 BASE_STEPS="${BASE_STEPS:-}" HEAD_STEPS=${HEAD_STEPS:-600}
  NANO_HEAD_STEPS=${NANO_HEAD_STEPS:-3000} CLLM_PROMPTS=${CLLM_PROMPTS:-1500}
  NANO_DISTILL=${NANO_DISTILL:-16000} SMALL_DISTILL=${SMALL_DISTILL:-7500}
  BENCH="--num-prompts ${BENCH_PROMPTS:-20} --max-new-tokens 256 --baselines fastchat,ar --dtype bfloat16"
fi

STAGES_DIR=$RUN
# shellcheck source=scripts/stages.sh
. "$(dirname "$0")/stages.sh"

if [ "${PHASE:-all}" != "bench" ]; then  # PHASE=train|bench|all (default all)
  # 1. Data and tokenizer (the split is recomputed with the real tokenizer afterwards).
  #    TOKENIZER=DIR reuses a trained tokenizer (the bundled model's) and skips training one.
  if [ -n "${TOKENIZER:-}" ]; then
    mkdir -p "$RUN" && cp -r "$TOKENIZER" "$RUN/tokenizer"
  else
    stage data $PY -m fastchat_spec.train.data --out-dir "$DATA" $LIMIT
    stage tokenizer $PY -m fastchat_spec.train.tokenizer --data "$DATA/train.json" --vocab-size $VOCAB \
      --out "$RUN/tokenizer" --max-sentences 300000
  fi
  stage data_split $PY -m fastchat_spec.train.data --out-dir "$DATA" --tokenizer "$RUN/tokenizer" \
    --model-max-length 1024 $LIMIT
fi

# 2. Bases. small (reference) is trained here; the bundled nano base is reused as it is
#    (NANO_BASE), or trained here too when NANO_BASE is empty. SKIP_NANO=1: small only.
NANO_BASE=${NANO_BASE-fastchat_spec/models/vicuna-nano}
nano_track() {  # nano base (unless bundled) -> self-distilled answers -> Medusa-1 heads
  local base=$NANO_BASE
  if [ -z "$base" ]; then
    base=$RUN/vicuna-nano
    stage base_nano $PY -m fastchat_spec.train.base --size $NANO --tokenizer "$RUN/tokenizer" \
      --data_path "$DATA/train.json" --eval_data_path "$DATA/heldout.json" --output_dir "$base" \
      --disable_tqdm True $BASE_STEPS || return
  fi
  distill_sharded nano "$base" "$DATA/train.json" "$RUN/distilled-nano.json" $NANO_DISTILL 4 256 &&
  stage medusa_nano $PY -m fastchat_spec.train.medusa --model_name_or_path "$base" \
    --output_dir "$RUN/medusa-vicuna-nano" --medusa_num_heads 4 --medusa_num_layers 1 \
    --data_path "$RUN/distilled-nano.json" --eval_data_path "$DATA/heldout.json" --per_device_train_batch_size 32 \
    --max_steps $NANO_HEAD_STEPS --learning_rate 1e-3 --model_max_length 512 --logging_steps 100 \
    --disable_tqdm True --tree_nodes 31
}
small_track() {  # small base -> self-distilled answers -> every method's heads, side by side
  stage base_small $PY -m fastchat_spec.train.base --size $SMALL --tokenizer "$RUN/tokenizer" \
    --data_path "$DATA/train.json" --eval_data_path "$DATA/heldout.json" --output_dir "$RUN/vicuna-small" \
    --disable_tqdm True $BASE_STEPS || return
  # Medusa's self-distillation: heads learn the base's own answers (what verification accepts).
  distill_sharded small "$RUN/vicuna-small" "$DATA/train.json" "$RUN/distilled-small.json" $SMALL_DISTILL 3 128 || return
  # CLLM after the distillation: both at once do not fit in 80 GB next to the heads.
  { stage cllm_data_small $PY -m fastchat_spec.train.cllm_data --model "$RUN/vicuna-small" \
      --data_path "$DATA/train.json" --output "$RUN/cllm_trajectories.json" --max_new_tokens 16 \
      --max_new_seq_len 256 --max_prompts $CLLM_PROMPTS &&
    stage cllm_small $PY -m fastchat_spec.train.cllm --model_name_or_path "$RUN/vicuna-small" \
      --data_path "$RUN/cllm_trajectories.json" --eval_data_path "$DATA/heldout.json" \
      --output_dir "$RUN/cllm-vicuna-small" --per_device_train_batch_size 16 --max_steps $HEAD_STEPS \
      --learning_rate 2e-5 --logging_steps 50 --disable_tqdm True; } &
  local heads="--data_path $RUN/distilled-small.json --eval_data_path $DATA/heldout.json \
    --per_device_train_batch_size 16 --max_steps $HEAD_STEPS --model_max_length 1024 --logging_steps 50 \
    --disable_tqdm True --dataloader_num_workers 2"
  local method
  for method in medusa1 hydra hydra-pp chimera medusa2; do
    # shellcheck disable=SC2046  # the recipe is a module and its flags
    stage "${method}_small" $PY -m $(head_recipe $method) --model_name_or_path "$RUN/vicuna-small" \
      --output_dir "$RUN/$method-vicuna-small" $heads &
  done
  wait
}

if [ "${PHASE:-all}" != "bench" ]; then
  [ "${SKIP_NANO:-0}" = "1" ] || nano_track &
  small_track &
  wait
  echo "=== training finished $(date +%T)" >> "$RUN/stages.log"
fi
[ "${PHASE:-all}" = "train" ] && exit 0

# The same held-out prompts for every benchmark.
$PY - "$RUN/prompts.jsonl" ${BENCH_PROMPTS:-20} <<'PYEOF'
import json, sys
from fastchat_spec.train.data import heldout_first_turns
with open(sys.argv[1], "w") as f:
    for turn in heldout_first_turns(int(sys.argv[2])):
        f.write(json.dumps({"turns": [turn], "category": "sharegpt-heldout"}) + "\n")
PYEOF
BENCH="$BENCH --prompts $RUN/prompts.jsonl"

# 4. Benchmarks, one run at a time (timings must not share the GPU). Checkpoints on one base
#    are timed in one run, prompt by prompt, against the same FastChat and AR baselines.
# CLLM without consistency training: plain Jacobi on the untuned base ("cllm" in the path).
[ -d "$RUN/vicuna-small" ] && ln -sfn vicuna-small "$RUN/cllm-untrained-vicuna-small"
bench_group() {  # bench_group NAME CHECKPOINT... (missing checkpoints are left out)
  local name=$1 paths=() m; shift
  for m in "$@"; do [ -d "$RUN/$m" ] && paths+=("$RUN/$m"); done
  [ ${#paths[@]} -gt 0 ] || return 0
  stage "bench_$name" $PY -m fastchat_spec.bench --model-path "${paths[@]}" $BENCH ${BENCH_EXTRA:-} \
    --out "$RUN/bench/$name.json"
}
bench_group small medusa1-vicuna-small hydra-vicuna-small hydra-pp-vicuna-small chimera-vicuna-small \
  cllm-untrained-vicuna-small
bench_group medusa2 medusa2-vicuna-small
bench_group cllm cllm-vicuna-small
bench_group nano medusa-vicuna-nano
echo "=== pipeline finished $(date +%T)" >> "$RUN/stages.log"
