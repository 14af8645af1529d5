# Call 1 (H100 80GB HBM3, 2026-12-07 00:28 UTC, at 5bf51d7).
# The Llama-7B-shaped step with Inductor freezing (committed env path) and max-autotune, one card.
# Carry: .gpu/whl_train .gpu/steps_autotune_only.sh
mkdir -p .whl && cp .gpu/whl_train/*.whl .whl/
source scripts/device_setup.sh >/dev/null; date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
FASTCHAT_SPEC_COMPILE_FREEZE=1 FASTCHAT_SPEC_COMPILE_MODE=max-autotune-no-cudagraphs timeout ${T:-300} python3 -m fastchat_spec.bench.steps \
  --shapes llama7b --compile 1 --profile --out $OUT/steps_freeze_autotune.json > $OUT/steps_freeze_autotune.log 2>&1; echo "autotune rc $?"
grep -v -i "warn" $OUT/steps_freeze_autotune.log | grep -v "^ *triton_mm\|^ *mm \|Autotune\|AUTOTUNE" | tail -24; date -u
