# Lent-GPU call: sampled requests in the batched step (twentieth session). FastChat's API, CLI and web UI sample by
# default (temperature 0.7); until this change each sampled request took a host step of its own, one after another.
#   1. scripts/gpu_check.py: every method alone and 16 at a time against FastChat (float32 exact), greedy rows
#      next to sampled ones (now the graphed sampled step), logprobs beside them, --load-8bit, and the law of
#      1,536 sampled answers, 16 at a time, against the exact law under FastChat's processors (about 4 min).
#   2. python -m fastchat_spec.bench on the bundled Medusa nano checkpoint at temperature 0.7, 1 and 8 clients,
#      next to our AR decoder, with the sampled step (after) and with FASTCHAT_SPEC_SAMPLED_STEP=0 (before: a
#      host step per sampled request); same weights, same machine, back to back (about 3 min).
#   3. python -m fastchat_spec.bench.batch_profile on the same checkpoint, 1 and 8 rows, greedy and sampled: what
#      the sampled variant's walk adds to a step (about 1 min).
# Carry: .gpu/whl_min .gpu/prompts.jsonl
source scripts/device_setup.sh >/dev/null; date -u
timeout "${CHECK_TIMEOUT:-240}" python3 scripts/gpu_check.py --out "$OUT"/gpu_check.json > "$OUT"/gpu_check.log 2>&1
echo "gpu_check rc $?"; grep -a "sampled x16\|FAILURES\|float32:" "$OUT"/gpu_check.log | tail -3 | cut -c1-400
B="--model-path fastchat_spec/models/medusa-vicuna-nano --prompts .gpu/prompts.jsonl --num-prompts ${PROMPTS:-24}
  --max-new-tokens 128 --baselines ar --dtype bfloat16 --temperature 0.7 --concurrency 1,8"
for when in after before; do
  step=1; [ $when = before ] && step=0
  # shellcheck disable=SC2086  # a list of flags
  FASTCHAT_SPEC_SAMPLED_STEP=$step timeout "${BENCH_TIMEOUT:-110}" python3 -m fastchat_spec.bench $B \
    --out "$OUT"/sampled_$when.json > "$OUT"/sampled_$when.log 2>&1; echo "bench $when rc $?"
  grep -a " tau \|^serving" "$OUT"/sampled_$when.log
done
for t in 0 0.7; do
  timeout "${PROFILE_TIMEOUT:-50}" python3 -m fastchat_spec.bench.batch_profile --model-path \
    fastchat_spec/models/medusa-vicuna-nano --rows 1,8 --length 512 --prompt-len 256 --steps 20 --dtype bfloat16 \
    --device cuda --temperature $t --out "$OUT"/profile_t$t.json > "$OUT"/profile_t$t.log 2>&1
  echo "batch_profile temperature $t rc $?"; grep -a " ms/step " "$OUT"/profile_t$t.log
done; date -u
