# Lent-GPU call (issue 15): is FlexAttention the tree step's missing kernel? The Llama-7B AR and 64-node tree
# steps under SDPA and under FlexAttention side by side (bench.steps --attention), profiled: first as graphs
# of the eager forward (about 2 minutes), then compiled with freezing (about 4 minutes); then the attention
# kernels alone (bench.attention). Carry: .gpu/whl_min (scripts/device/prep.sh). About 8 minutes in all;
# each part has its own timeout, so a short lease still returns the first.
source scripts/device_setup.sh >/dev/null; date -u
steps() {  # steps NAME TIMEOUT ARGS...: one bench.steps run, both attentions, into $OUT/NAME.json and .log
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 -m fastchat_spec.bench.steps --shapes llama7b --attention sdpa,flex_attention --profile \
    "$@" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1; echo "$name rc $?"
  grep -v -i warn "$OUT/$name.log" | grep -A8 "^llama7b"; date -u
}
steps steps_attention_eager "${EAGER_TIMEOUT:-150}" --compile 0
FASTCHAT_SPEC_COMPILE_FREEZE=1 steps steps_attention_freeze "${FREEZE_TIMEOUT:-300}" --compile 1
timeout "${ATTN_TIMEOUT:-90}" python3 -m fastchat_spec.bench.attention --out "$OUT/attention.json" \
  > "$OUT/attention.log" 2>&1; echo "attention rc $?"
grep -v -i warn "$OUT/attention.log" | tail -14; date -u
