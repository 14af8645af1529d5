# Call 1 (NVIDIA H100 80GB HBM3, 2026-12-06, ninth session), code at 3feacd9: the Llama-7B step compiled, with
# FASTCHAT_SPEC_COMPILE_FREEZE=1 (then a compile option only: it changed nothing) and without.
# The Llama-7B-shaped step, compiled, with and without Inductor freezing, side by side on one card.
# Carry: .whl .gpu/steps_call.sh
source scripts/device_setup.sh >/dev/null; date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for v in freeze plain; do
  f=0; [ $v = freeze ] && f=1
  FASTCHAT_SPEC_COMPILE_FREEZE=$f timeout 240 python3 -m fastchat_spec.bench.steps --shapes llama7b --compile 1 --profile \
    --out $OUT/steps_$v.json > $OUT/steps_$v.log 2>&1; echo "$v rc $?"
  grep -v -i "warn" $OUT/steps_$v.log | tail -17; date -u
done
