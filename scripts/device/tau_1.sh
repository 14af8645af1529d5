# Lent-GPU call 1 of the tau run (issue 15): the `small` reference base, then its greedy answers to the first
# DISTILL (5,000) training prompts. Carry: .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl (scripts/device/prep.sh).
# The base and the answers stay on the machine (runs/tau) for tau_2.sh, the next call on the same warm machine.
# Sized for an 80 GB H100 (about 8.5 minutes: base 5, answers 3.5; 502 s in the fifteenth session, when the old
# 500 s limit cut the merge of the answers short): four answer processes of 64 prompts; a batch
# that still does not fit is halved by the distiller (fastchat_spec/train/distill.py), not lost.
source scripts/device_setup.sh >/dev/null; date -u
mkdir -p runs/small_data
for f in train heldout; do unxz .gpu/small_xz/$f.json.xz runs/small_data/$f.json; done
HEADS=8 METHODS=chimera STAGES="base distill" DISTILL=${DISTILL:-5000} SHARDS=4 DISTILL_BATCH=${DISTILL_BATCH:-64} \
  timeout ${CALL_TIMEOUT:-560} bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/tau /tmp/tauout
echo "rc $?"
cp runs/tau/stages.log runs/tau/base.log runs/tau/distill_*.log "$OUT"/ 2>/dev/null
cat runs/tau/stages.log; date -u
