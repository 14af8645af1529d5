# Lent-GPU call (issue 15), after tau_1.sh on the same machine: CLLM consistency rounds on the `small` base
# (code domain; scripts/cllm_gpu.sh). Measured on an H100: base 47 s, then per round collect 37 s, train 174 s,
# measure 20 s, so two rounds fill a call. Carry: .gpu/cllm_xz.
source scripts/device_setup.sh >/dev/null; date -u
[ -d runs/tau/vicuna-small ] || { echo "no runs/tau/vicuna-small here: tau_1.sh runs first, on this machine"; exit 1; }
mkdir -p runs/cllm_data
for f in .gpu/cllm_xz/*.xz; do unxz "$f" "runs/cllm_data/$(basename "$f" .xz)"; done
BASE=runs/tau/vicuna-small SUBSETS=runs/cllm_data WORK=runs/cllm-small ROUNDS=${ROUNDS:-2} \
  timeout ${CLLM_TIMEOUT:-540} bash scripts/cllm_gpu.sh /tmp/cllmout; echo "cllm rc $?"
cp /tmp/cllmout/summary.json /tmp/cllmout/stages.log /tmp/cllmout/rounds.log "$OUT"/ 2>/dev/null; date -u
