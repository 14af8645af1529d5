#!/usr/bin/env bash
# After `PHASE=train bash scripts/gpu_pipeline.sh`: grow the Medusa trees from the heads' agreement
# with the base on held-out prompts, then the benchmarks (PHASE=bench), the worker benchmark through
# FastChat's OpenAI API, and the Llama-7B step times with autotuned compiled kernels.
set -u
RUN=${RUN:-runs/pipeline}
PY=${PYTHON:-python3}
log() { echo "=== $* $(date +%T)" >> "$RUN/stages.log"; }
until grep -q "training finished" "$RUN/stages.log"; do sleep 3; done
# The base's own answers to held-out prompts: what verification accepts.
$PY -m fastchat_spec.train.distill --model-path "$RUN/vicuna-small" --data_path "$RUN/data/heldout.json" \
  --output "$RUN/distilled-heldout-small.json" --max-new-tokens 256 --batch-size 160 --max-turns 1 \
  --max-conversations 160 > "$RUN/distill_heldout_small.log" 2>&1
log "done distill_heldout_small rc=$?"
for m in medusa1-vicuna-small medusa2-vicuna-small; do
  $PY -m fastchat_spec.train.tree_search --model-path "$RUN/$m" --data_path "$RUN/distilled-heldout-small.json" \
    --num-nodes 63 --max-len 1024 > "$RUN/tree_$m.log" 2>&1
  log "done tree_$m rc=$?"
done
PHASE=bench bash scripts/gpu_pipeline.sh
BENCH_ARGS="--prompts $RUN/prompts.jsonl --num-prompts ${BENCH_PROMPTS:-10}" \
  bash scripts/worker_bench.sh "$RUN/medusa1-vicuna-small" "$RUN/vicuna-small" "$RUN/bench/worker_api.json" \
  > "$RUN/worker_bench.log" 2>&1
log "done worker_bench rc=$?"
# The Llama-7B shape's step times with the forward compiled with autotuned kernels (last: it may take long).
FASTCHAT_SPEC_COMPILE_MODE=max-autotune-no-cudagraphs timeout 420 $PY -m fastchat_spec.bench.steps \
  --shapes llama7b --context 512 --tree-nodes 64 --compile 1 --out "$RUN/bench/steps_llama7b_autotune.json" \
  > "$RUN/steps_autotune.log" 2>&1
log "done steps_autotune rc=$?"
log "ALL DONE"
