# Lent-GPU call 2 of the tau run (issue 15), the next call on the machine tau_1.sh ran on: 8 Chimera heads on the
# base's answers and MIX (11,000) of ShareGPT's human-answered conversations, alone on the GPU (HEAD_STEPS steps,
# then the tree searched from measured acceptance, saved). On the base's 5,000 answers alone the heads overfit
# (expected tokens per step 1.77); with the mix they reached tau 5.10 (fourteenth session). On an H100, 1,000
# steps on the mix took 211 s; if the limit comes first, the timeout's SIGTERM makes the trainer save what it
# has. Carry: nothing beyond the tracked files (the wheels, base and answers are still on the machine).
# METHODS="hydra-pp chimera" trains both side by side for the per-method comparison (they share the GPU, so
# give it HEAD_TIMEOUT=440; a trainer the limit stops measures and saves its heads within the 2 minutes below: with
# 290 s, Hydra++ finished in 253 s and Chimera, stopped, crashed, before the fix of its DataLoader workers, fifteenth
# session). Next: tau_3.sh with the same METHODS.
source scripts/device_setup.sh >/dev/null; date -u
[ -f runs/tau/distilled-small.json ] || { echo "no runs/tau here: tau_1.sh runs first, on this machine"; exit 1; }
HEADS=8 METHODS=${METHODS:-chimera} HEAD_STEPS=${HEAD_STEPS:-1000} MIX=${MIX:-11000} STAGES=heads timeout ${HEAD_TIMEOUT:-440} \
  bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/tau /tmp/tauout; echo "heads rc $?"
# A timeout's SIGTERM reaches the trainer too: it stops after its step, measures the heads it has on the
# held-out conversations (under a minute on an H100: Hydra++ took 253 s in all for 197 s of training) and saves
# them; give it two minutes to do so before the call returns (which would kill it).
for _ in $(seq 120); do pgrep -f "fastchat_spec.train.(chimera|hydra)" >/dev/null || break; sleep 1; done
for method in ${METHODS:-chimera}; do
  cp runs/tau/$method-vicuna-small/train_report.json "$OUT"/train_$method.json 2>/dev/null
  cp runs/tau/heads_$method.log "$OUT"/ 2>/dev/null
  grep -a "expected\|saved\|train_runtime" runs/tau/heads_$method.log | tail -3
done; date -u
