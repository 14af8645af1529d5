# Lent-GPU call: the concurrent GPU check (scripts/gpu_check.py, every method's float32 greedy text against
# FastChat's, alone, 16 at a time and next to sampled requests) with prompt forwards beside the steps
# (FASTCHAT_SPEC_PREFILL_STREAM=1) twice, then after them (the default) once; about 130 s each on an H100.
# At 8b1a44a, before the prompt graphs were captured on a stream of their own, two runs with prompt forwards
# beside the steps failed 2 and 7 of the 14 float32 cases, on different prompts each time (fourteenth session).
# Flip the default (generate/prefill.py) only once the =1 runs pass. Carry: .gpu/whl_min.
source scripts/device_setup.sh >/dev/null; date -u
for run in stream1-a stream1-b stream0; do
  [ "$run" = stream0 ] && setting=0 || setting=1
  FASTCHAT_SPEC_PREFILL_STREAM=$setting timeout ${CHECK_TIMEOUT:-180} python3 scripts/gpu_check.py \
    --out "$OUT/gpu_check_$run.json" > "$OUT/gpu_check_$run.log" 2>&1
  echo "$run (FASTCHAT_SPEC_PREFILL_STREAM=$setting): rc $?"; grep -a "FAILURES" "$OUT/gpu_check_$run.log" | cut -c1-300
done
date -u
