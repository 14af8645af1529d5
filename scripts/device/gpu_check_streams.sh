# Lent-GPU call: the concurrent GPU check (scripts/gpu_check.py, every method's float32 greedy text against
# FastChat's, alone, 16 at a time and next to sampled requests) with prompt forwards beside the steps
# (FASTCHAT_SPEC_PREFILL_STREAM=1, the default) twice, then after them (=0) once; about 130 s each on an H100.
# At 8b1a44a, before the prompt graphs were captured on a stream of their own, two runs with prompt forwards
# beside the steps failed 2 and 7 of the 14 float32 cases, on different prompts each time (fourteenth session).
# With the prompt graphs on their own capture stream all three passed (fifteenth session, H100), and =1 is the
# default again. Run it after any change to graph capture or streams. Carry: .gpu/whl_min.
source scripts/device_setup.sh >/dev/null; date -u
for run in stream1-a stream1-b stream0; do
  [ "$run" = stream0 ] && setting=0 || setting=1
  FASTCHAT_SPEC_PREFILL_STREAM=$setting timeout ${CHECK_TIMEOUT:-180} python3 scripts/gpu_check.py \
    --out "$OUT/gpu_check_$run.json" > "$OUT/gpu_check_$run.log" 2>&1
  echo "$run (FASTCHAT_SPEC_PREFILL_STREAM=$setting): rc $?"; grep -a "FAILURES" "$OUT/gpu_check_$run.log" | cut -c1-300
done
date -u
