# Lent-GPU call (issue 15): is FlexAttention the tree step's missing kernel? The Llama-7B AR and 64-node tree
# steps with freezing, under SDPA and under FlexAttention side by side in one run (bench.steps --attention),
# profiled; then the attention kernels alone (bench.attention). Carry: .gpu/whl_min (scripts/device/prep.sh).
# STEPS_ARGS="--compile 0" (eager graphs, no Inductor compile) fits a lease of about 3 minutes.
ls .whl/*.whl >/dev/null 2>&1 || { mkdir -p .whl && cp .gpu/whl_min/*.whl .whl/; }
source scripts/device_setup.sh >/dev/null; date -u
# shellcheck disable=SC2086  # STEPS_ARGS is a list of flags
FASTCHAT_SPEC_COMPILE_FREEZE=1 timeout ${STEPS_TIMEOUT:-320} python3 -m fastchat_spec.bench.steps --shapes llama7b \
  --attention sdpa,flex_attention --profile ${STEPS_ARGS:---compile 1} --out "$OUT/steps_attention.json" \
  > "$OUT/steps_attention.log" 2>&1; echo "steps rc $?"
grep -v -i warn "$OUT/steps_attention.log" | grep -A8 "^llama7b"; date -u
timeout ${ATTN_TIMEOUT:-120} python3 -m fastchat_spec.bench.attention --out "$OUT/attention.json" \
  > "$OUT/attention.log" 2>&1; echo "attention rc $?"
grep -v -i warn "$OUT/attention.log" | tail -14; date -u
