# Lent-GPU call 3 of the tau run (issue 15), after tau_2.sh on the same machine: tau of the 8-head checkpoints per
# category against our graphed AR decoder, 40 held-out prompts, side by side in one benchmark run (about 3
# minutes). Then, for Hydra++ heads, what a dynamic tree (EAGLE-2's, chosen per step by the heads' confidence)
# would accept against the best static tree (python -m fastchat_spec.train.dynamic_tree, about a minute; on the
# nano base on a CPU it gained 2% at 7 nodes and nothing at 63). Carry: .gpu/prompts.jsonl.
source scripts/device_setup.sh >/dev/null; date -u
[ -n "$(ls runs/tau/*-vicuna-small/config.json 2>/dev/null)" ] || { echo "no trained heads here: tau_2.sh runs first"; exit 1; }
HEADS=8 METHODS=${METHODS:-chimera} BASELINES=ar STAGES=bench timeout ${BENCH_TIMEOUT:-300} \
  bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/tau /tmp/tauout; echo "bench rc $?"
cp /tmp/tauout/tau.json runs/tau/stages.log "$OUT"/ 2>/dev/null
tail -25 runs/tau/bench.log
if [ -d runs/tau/hydra-pp-vicuna-small ]; then
  timeout ${DYNAMIC_TIMEOUT:-150} python3 -m fastchat_spec.train.dynamic_tree --model-path runs/tau/hydra-pp-vicuna-small \
    --prompts .gpu/prompts.jsonl --num-prompts 40 --max-new-tokens 128 --top 4 --depth 5 --sizes 7,15,31,63,127,255 \
    --device cuda > "$OUT"/dynamic_tree_hydra-pp.txt 2>&1; echo "dynamic tree rc $?"; grep -a "nodes:" "$OUT"/dynamic_tree_hydra-pp.txt
fi; date -u
