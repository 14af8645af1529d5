# Lent-GPU call 1 of the tau run (issue 15): the `small` reference base, then its greedy answers to the first
# DISTILL (5,000) training prompts. Carry: .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl (scripts/device/prep.sh).
# The base and the answers stay on the machine (runs/tau) for tau_2.sh, the next call on the same warm machine.
source scripts/device_setup.sh >/dev/null; date -u
mkdir -p runs/small_data
for f in train heldout; do unxz .gpu/small_xz/$f.json.xz runs/small_data/$f.json; done
HEADS=8 METHODS=chimera STAGES="base distill" DISTILL=${DISTILL:-5000} SHARDS=4 timeout ${CALL_TIMEOUT:-470} \
  bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/tau /tmp/tauout; echo "rc $?"
cp runs/tau/stages.log runs/tau/base.log "$OUT"/ 2>/dev/null
cat runs/tau/stages.log; date -u
