# Lent-GPU call 3 of the tau run when it measures a change to the loop (instead of tau_3.sh): the 8-head
# checkpoints that tau_2.sh trained, benchmarked with this tree ("after") and with the tree before the change
# ("before", from runs/old), each next to our graphed AR decoder, on the same machine, then the concurrent GPU
# check (scripts/gpu_check.py). About 6 minutes on an H200 (320 s in the eighteenth session, without clients).
# CONCURRENCY=1,8 adds those levels of concurrent clients to both benchmarks (about 1.5 minutes more each).
# Carry: .gpu/prompts.jsonl runs/old (the tree before the change:
#   mkdir -p runs/old && git archive REV fastchat_spec ":(exclude)fastchat_spec/models" | tar -x -C runs/old).
# Written for generate.verify.eager_attention (a731ab2; runs/old at be388ef), eighteenth session; next for the
# row-batched Hydra/Chimera proposers (06119c0; runs/old at d360c7c, with CONCURRENCY=1,8).
source scripts/device_setup.sh >/dev/null; date -u
[ -n "$(ls runs/tau/*-vicuna-small/config.json 2>/dev/null)" ] || { echo "no trained heads here: tau_2.sh runs first"; exit 1; }
[ -d runs/old/fastchat_spec ] || { echo "no runs/old: carry the tree before the change"; exit 1; }
CLIENTS=${CONCURRENCY:+--concurrency $CONCURRENCY}
HEADS=8 METHODS=${METHODS:-"hydra-pp chimera"} BASELINES=ar STAGES=bench BENCH_ARGS="--dtype bfloat16 $CLIENTS" timeout ${BENCH_TIMEOUT:-240} \
  bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/tau /tmp/tauout; echo "after rc $?"
cp /tmp/tauout/tau.json "$OUT"/after.json; cp runs/tau/bench.log "$OUT"/after.log; tail -8 runs/tau/bench.log
M=""; for method in ${METHODS:-hydra-pp chimera}; do M="$M $PWD/runs/tau/$method-vicuna-small"; done
# The old tree runs from its own folder: `python -m` puts the working directory ahead of PYTHONPATH, so
# PYTHONPATH=runs/old from the repository root would run this tree twice (as it did in the eighteenth session's
# first try: benchmarks/raw/tau-fix-h200-2026-12-07-eighteenth/calls.sh).
# shellcheck disable=SC2086  # a list of paths
(cd runs/old && timeout ${BENCH_TIMEOUT:-240} python3 -m fastchat_spec.bench --model-path $M \
  --prompts /tmp/tauout/prompts.jsonl --num-prompts 40 --max-new-tokens 256 --baselines ar --dtype bfloat16 $CLIENTS \
  --out "$OUT"/before.json > "$OUT"/before.log 2>&1); echo "before rc $?"; tail -8 "$OUT"/before.log
timeout ${CHECK_TIMEOUT:-180} python3 scripts/gpu_check.py --out "$OUT"/gpu_check.json > "$OUT"/gpu_check.log 2>&1
echo "gpu_check rc $?"; grep -a "FAILURES\|float32:\|bfloat16:\|passed\|failed" "$OUT"/gpu_check.log | tail -4 | cut -c1-300; date -u
