#!/usr/bin/env bash
# Tokens per step (tau) on the `small` reference model (issue 15): heads trained longer on the base's own
# answers, each with its tree searched from measured acceptance, then every method's tau per category
# next to FastChat's stock decoder and our graphed AR decoder, in one benchmark run.
#
# A lent GPU call lasts at most 10 minutes and the base (200 MB) cannot come back from the machine, so
# the work is split into stages run as consecutive calls on one warm machine (about 20 minutes in all on
# an H100):
#   STAGES="base distill"  the small base as the pipeline trains it (about 4 min), then its greedy answers
#                          to the first DISTILL training prompts, in SHARDS processes (about 4 min)
#   STAGES=heads           the heads of every method in METHODS on those answers, HEAD_STEPS steps each,
#                          all at once on the one GPU; each trainer searches its checkpoint's tree of
#                          TREE_NODES nodes from the acceptance it measures on held-out answers
#   STAGES=bench           python -m fastchat_spec.bench on every trained checkpoint, BENCH_PROMPTS held-out
#                          prompts labelled code, math or general (fastchat_spec/train/domain.py)
#
# Usage: bash scripts/small_tau.sh DATA_DIR PROMPTS.jsonl RUN_DIR OUT_DIR
#   DATA_DIR holds train.json and heldout.json from
#     python -m fastchat_spec.train.data --out-dir DATA_DIR --tokenizer fastchat_spec/models/vicuna-nano \
#       --model-max-length 1024
#   PROMPTS.jsonl: held-out first turns ({"turns": [...]}, as fastchat_spec.bench reads them)
# Environment [defaults]: SIZE [small] (tiny: a CPU smoke run), BASE_ARGS [] extra flags for the base,
#   DISTILL [7500] conversations, SHARDS [3], DISTILL_BATCH [128], METHODS [hydra-pp chimera] (names of
#   head_recipe in scripts/stages.sh), HEADS [4] heads per method (a step accepts at most HEADS + 1
#   tokens), HEAD_STEPS [2000], HEAD_BATCH [16], HEAD_ARGS [] extra flags for every head trainer,
#   MIX [0] of DATA_DIR's train.json conversations (human answers) shuffled in with the base's answers for the
#   heads (fastchat_spec.train.data.mix_conversations: on the base's answers alone they overfit),
#   TREE_NODES [63], BENCH_PROMPTS [40], BASELINES [fastchat,ar] (ar alone skips FastChat's slow stock
#   decoder), BENCH_ARGS [--dtype bfloat16],
#   STAGES [base distill heads bench].
# Logs: RUN_DIR/<stage>.log and RUN_DIR/stages.log; results: OUT_DIR/tau.json (and .png), OUT_DIR/prompts.jsonl,
#   OUT_DIR/train_<method>.json (each trainer's report: losses, tree, expected tokens per step).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${1:?usage: bash scripts/small_tau.sh DATA_DIR PROMPTS.jsonl RUN_DIR OUT_DIR} PROMPTS=${2:?} RUN=${3:?}
OUT=${4:?}
PY=${PYTHON:-python3}
SIZE=${SIZE:-small}
METHODS=${METHODS:-hydra-pp chimera}
STAGES=${STAGES:-base distill heads bench}
mkdir -p "$RUN" "$OUT"
STAGES_DIR=$RUN
# shellcheck source=scripts/stages.sh
. "$ROOT/scripts/stages.sh"
wanted() { [[ " $STAGES " == *" $1 "* ]]; }
BASE=$RUN/vicuna-$SIZE
DISTILLED=$RUN/distilled-$SIZE.json

if wanted base; then
  # shellcheck disable=SC2086  # BASE_ARGS is a list of flags
  stage base $PY -m fastchat_spec.train.base --size "$SIZE" --tokenizer "$ROOT/fastchat_spec/models/vicuna-nano" \
    --data_path "$DATA/train.json" --eval_data_path "$DATA/heldout.json" --output_dir "$BASE" \
    --disable_tqdm True ${BASE_ARGS:-} || { tail -20 "$RUN/base.log"; exit 1; }
  tail -1 "$RUN/base.log"
fi

if wanted distill; then
  distill_sharded "$SIZE" "$BASE" "$DATA/train.json" "$DISTILLED" "${DISTILL:-7500}" "${SHARDS:-3}" \
    "${DISTILL_BATCH:-128}" || { tail -20 "$RUN"/distill_*.log; exit 1; }
  $PY -c "import json, sys; print(len(json.load(open(sys.argv[1]))), 'distilled answers')" "$DISTILLED"
fi

if wanted heads; then
  [ -f "$DISTILLED" ] || { echo "no $DISTILLED: run the distill stage first (on the same machine)"; exit 1; }
  HEAD_DATA=$DISTILLED
  if [ "${MIX:-0}" -gt 0 ]; then
    HEAD_DATA=$RUN/heads-data-$SIZE.json
    $PY -c "import sys; from fastchat_spec.train.data import write_mix
print(write_mix(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]), 'conversations for the heads')" \
      "$DISTILLED" "$DATA/train.json" "$MIX" "$HEAD_DATA" || exit 1
  fi
  for method in $METHODS; do
    recipe=$(head_recipe "$method" "${HEADS:-4}") || exit 2
    # shellcheck disable=SC2086  # the recipe is a module and its flags; HEAD_ARGS a list of flags
    stage "heads_$method" $PY -m $recipe --model_name_or_path "$BASE" --output_dir "$RUN/$method-vicuna-$SIZE" \
      --data_path "$HEAD_DATA" --eval_data_path "$DATA/heldout.json" --per_device_train_batch_size "${HEAD_BATCH:-16}" \
      --max_steps "${HEAD_STEPS:-2000}" --model_max_length 1024 --logging_steps 100 --disable_tqdm True \
      --dataloader_num_workers 2 --tree_nodes "${TREE_NODES:-63}" ${HEAD_ARGS:-} &
  done
  wait
  for method in $METHODS; do
    report=$RUN/$method-vicuna-$SIZE/train_report.json
    if [ -f "$report" ]; then cp "$report" "$OUT/train_$method.json"; else tail -20 "$RUN/heads_$method.log"; fi
  done
fi

if wanted bench; then
  # The prompts, each labelled with its domain, so the benchmark reports tau per category.
  $PY - "$PROMPTS" "$OUT/prompts.jsonl" "${BENCH_PROMPTS:-40}" <<'PYEOF' || exit 1
import json, sys
from fastchat_spec.train.domain import is_code, is_math
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()][: int(sys.argv[3])]
with open(sys.argv[2], "w") as f:
    for row in rows:
        first = row["turns"][0]
        row["category"] = "code" if is_code(first) else "math" if is_math(first) else "general"
        f.write(json.dumps(row) + "\n")
PYEOF
  checkpoints=()
  for method in $METHODS; do
    [ -d "$RUN/$method-vicuna-$SIZE" ] && checkpoints+=("$RUN/$method-vicuna-$SIZE")
  done
  [ ${#checkpoints[@]} -gt 0 ] || { echo "no trained heads in $RUN: run the heads stage first"; exit 1; }
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  stage bench $PY -m fastchat_spec.bench --model-path "${checkpoints[@]}" --prompts "$OUT/prompts.jsonl" \
    --num-prompts "${BENCH_PROMPTS:-40}" --max-new-tokens 256 --baselines "${BASELINES:-fastchat,ar}" ${BENCH_ARGS:---dtype bfloat16} \
    --out "$OUT/tau.json" || { tail -20 "$RUN/bench.log"; exit 1; }
  tail -12 "$RUN/bench.log"
fi
