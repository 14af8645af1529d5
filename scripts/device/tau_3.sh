# Lent-GPU call 3 of the tau run (issue 15), after tau_2.sh on the same machine: tau of the 8-head checkpoints per
# category against our graphed AR decoder, 40 held-out prompts, side by side in one benchmark run (about 3
# minutes). Carry: .gpu/prompts.jsonl.
source scripts/device_setup.sh >/dev/null; date -u
[ -n "$(ls runs/tau/*-vicuna-small/config.json 2>/dev/null)" ] || { echo "no trained heads here: tau_2.sh runs first"; exit 1; }
HEADS=8 METHODS=${METHODS:-chimera} BASELINES=ar STAGES=bench timeout ${BENCH_TIMEOUT:-300} \
  bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/tau /tmp/tauout; echo "bench rc $?"
cp /tmp/tauout/tau.json runs/tau/stages.log "$OUT"/ 2>/dev/null
tail -25 runs/tau/bench.log; date -u
