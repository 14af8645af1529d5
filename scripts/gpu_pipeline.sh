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
  BENCH="--num-prompts 3 --max-new-tokens 32 --baselines fastchat,ar --dtype float32" CLLM_PROMPTS=8
else
  NANO=nano SMALL=small LIMIT="" VOCAB=8000 BASE_STEPS="${BASE_STEPS:-}" HEAD_STEPS=${HEAD_STEPS:-600}
  NANO_HEAD_STEPS=1500 CLLM_PROMPTS=${CLLM_PROMPTS:-1500}
  BENCH="--num-prompts ${BENCH_PROMPTS:-20} --max-new-tokens 256 --baselines fastchat,ar --dtype bfloat16"
fi
COMMON_HEAD="--data_path $DATA/train.json --eval_data_path $DATA/heldout.json --per_device_train_batch_size 16 \
  --max_steps $HEAD_STEPS --model_max_length 1024 --logging_steps 50 --disable_tqdm True --dataloader_num_workers 2"

stage() {  # stage NAME command...
  local name=$1; shift
  echo "=== start $name $(date +%T)" >> "$RUN/stages.log"
  "$@" > "$RUN/$name.log" 2>&1
  local rc=$?
  echo "=== done  $name rc=$rc $(date +%T)" >> "$RUN/stages.log"
  return $rc
}

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

# 2. Bases: nano (bundled) and small (reference), side by side. SKIP_NANO=1: small only.
[ "${SKIP_NANO:-0}" = "1" ] || stage base_nano $PY -m fastchat_spec.train.base --size $NANO --tokenizer "$RUN/tokenizer" \
  --data_path "$DATA/train.json" --eval_data_path "$DATA/heldout.json" --output_dir "$RUN/vicuna-nano" \
  --disable_tqdm True $BASE_STEPS &
stage base_small $PY -m fastchat_spec.train.base --size $SMALL --tokenizer "$RUN/tokenizer" \
  --data_path "$DATA/train.json" --eval_data_path "$DATA/heldout.json" --output_dir "$RUN/vicuna-small" \
  --disable_tqdm True $BASE_STEPS &
wait

# 3. Heads. Same data and step budget for every head-based method on small.
[ "${SKIP_NANO:-0}" = "1" ] || stage medusa_nano $PY -m fastchat_spec.train.medusa --model_name_or_path "$RUN/vicuna-nano" \
  --output_dir "$RUN/medusa-vicuna-nano" --medusa_num_heads 4 --medusa_num_layers 1 \
  --data_path "$DATA/train.json" --eval_data_path "$DATA/heldout.json" --per_device_train_batch_size 32 \
  --max_steps $NANO_HEAD_STEPS --model_max_length 512 --logging_steps 100 --disable_tqdm True &
stage medusa1_small $PY -m fastchat_spec.train.medusa --model_name_or_path "$RUN/vicuna-small" \
  --output_dir "$RUN/medusa1-vicuna-small" --medusa_num_heads 4 --medusa_num_layers 1 $COMMON_HEAD &
stage hydra_small $PY -m fastchat_spec.train.hydra --model_name_or_path "$RUN/vicuna-small" \
  --output_dir "$RUN/hydra-vicuna-small" --hydra_num_heads 4 --hydra_num_layers 1 --hydra_head_arch mlp \
  --lm_loss_weight 1.0 --learning_rate 1e-3 $COMMON_HEAD &
stage hydrapp_small $PY -m fastchat_spec.train.hydra --model_name_or_path "$RUN/vicuna-small" \
  --output_dir "$RUN/hydra-pp-vicuna-small" --hydra_num_heads 4 --hydra_num_layers 4 \
  --hydra_head_arch prefix-mlp --teacher_loss_weight 1.0 --lm_loss_weight 0.0 --learning_rate 1e-3 $COMMON_HEAD &
stage chimera_small $PY -m fastchat_spec.train.chimera --model_name_or_path "$RUN/vicuna-small" \
  --output_dir "$RUN/chimera-vicuna-small" --chimera_num_heads 4 --chimera_num_layers 1 $COMMON_HEAD &
stage medusa2_small $PY -m fastchat_spec.train.medusa --model_name_or_path "$RUN/vicuna-small" \
  --output_dir "$RUN/medusa2-vicuna-small" --medusa_num_heads 4 --medusa_num_layers 1 --medusa_stage 2 \
  $COMMON_HEAD &
{ stage cllm_data_small $PY -m fastchat_spec.train.cllm_data --model "$RUN/vicuna-small" \
    --data_path "$DATA/train.json" --output "$RUN/cllm_trajectories.json" --max_new_tokens 16 \
    --max_new_seq_len 256 --max_prompts $CLLM_PROMPTS &&
  stage cllm_small $PY -m fastchat_spec.train.cllm --model_name_or_path "$RUN/vicuna-small" \
    --data_path "$RUN/cllm_trajectories.json" --eval_data_path "$DATA/heldout.json" \
    --output_dir "$RUN/cllm-vicuna-small" --per_device_train_batch_size 16 --max_steps $HEAD_STEPS \
    --learning_rate 2e-5 --logging_steps 50 --disable_tqdm True; } &
wait

# The same held-out prompts for every benchmark.
$PY - "$RUN/prompts.jsonl" ${BENCH_PROMPTS:-20} <<'PYEOF'
import json, sys
from fastchat_spec.train.data import heldout_first_turns
with open(sys.argv[1], "w") as f:
    for turn in heldout_first_turns(int(sys.argv[2])):
        f.write(json.dumps({"turns": [turn], "category": "sharegpt-heldout"}) + "\n")
PYEOF
BENCH="$BENCH --prompts $RUN/prompts.jsonl"

# 4. Benchmarks, one method at a time (timings must not share the GPU).
# CLLM without consistency training: plain Jacobi on the untuned base ("cllm" in the path).
[ -d "$RUN/vicuna-small" ] && ln -sfn vicuna-small "$RUN/cllm-untrained-vicuna-small"
for m in ${BENCH_ONLY:-medusa-vicuna-nano medusa1-vicuna-small medusa2-vicuna-small hydra-vicuna-small \
         hydra-pp-vicuna-small chimera-vicuna-small cllm-vicuna-small cllm-untrained-vicuna-small}; do
  [ -d "$RUN/$m" ] || continue
  stage "bench_$m" $PY -m fastchat_spec.bench --model-path "$RUN/$m" $BENCH \
    --out "$RUN/bench/$m.json"
done
echo "=== pipeline finished $(date +%T)" >> "$RUN/stages.log"
