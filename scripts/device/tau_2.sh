# Lent-GPU call 2 of the tau run (issue 15), the next call on the machine tau_1.sh ran on: 8 Chimera heads
# (HEAD_STEPS on the base's answers, tree searched from measured acceptance) and, beside them, CLLM rounds on
# the `small` base (code domain); then tau of the 8-head Chimera against our graphed AR, 40 held-out prompts.
# Carry: .gpu/prompts.jsonl .gpu/cllm_xz (the wheels, base and answers are still on the machine).
source scripts/device_setup.sh >/dev/null; date -u
[ -f runs/tau/distilled-small.json ] || { echo "no runs/tau here: tau_1.sh runs first, on this machine"; exit 1; }
mkdir -p runs/cllm_data
for f in .gpu/cllm_xz/*.xz; do unxz "$f" "runs/cllm_data/$(basename "$f" .xz)"; done
BASE=runs/tau/vicuna-small SUBSETS=runs/cllm_data WORK=runs/cllm-small ROUNDS=${ROUNDS:-2} \
  timeout ${CLLM_TIMEOUT:-420} bash scripts/cllm_gpu.sh /tmp/cllmout > /tmp/cllm_call.log 2>&1 &
cllm=$!
HEADS=8 METHODS=chimera HEAD_STEPS=${HEAD_STEPS:-1200} STAGES=heads timeout ${HEAD_TIMEOUT:-240} \
  bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/tau /tmp/tauout; echo "heads rc $?"; date -u
HEADS=8 METHODS=chimera BASELINES=ar STAGES=bench timeout ${BENCH_TIMEOUT:-170} \
  bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/tau /tmp/tauout; echo "bench rc $?"; date -u
wait $cllm; echo "cllm rc $?"
cp /tmp/tauout/tau.json /tmp/tauout/train_chimera.json /tmp/cllmout/summary.json "$OUT"/ 2>/dev/null
cat runs/tau/stages.log /tmp/cllmout/stages.log > "$OUT/stages.log" 2>/dev/null
tar czf "$OUT/logs.tgz" runs/tau/*.log /tmp/cllmout /tmp/cllm_call.log 2>/dev/null
tail -25 runs/tau/bench.log; tail -15 /tmp/cllm_call.log; date -u
