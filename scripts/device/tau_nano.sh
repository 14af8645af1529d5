# One lent-GPU call (about 6 minutes), for a session with too little device time for tau_1..3: every head method
# on the bundled nano base (no base to train), side by side in one run. The base answers the first DISTILL (2,000)
# training prompts; each method's heads (HEADS 4, HEAD_STEPS 600) train at once on those answers mixed with MIX
# (11,000) ShareGPT conversations, their trees searched from measured acceptance; then tau per method and per
# category against our graphed AR decoder on the 40 held-out prompts (fastchat_spec.bench, bf16).
# With less device time: METHODS="medusa1 hydra-pp chimera" DISTILL=1000 HEAD_TIMEOUT=150 BENCH_TIMEOUT=120 (about 5 min).
# Carry: .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl (scripts/device/prep.sh).
source scripts/device_setup.sh >/dev/null; date -u
mkdir -p runs/small_data runs/taunano
for f in train heldout; do unxz .gpu/small_xz/$f.json.xz runs/small_data/$f.json; done
[ -d runs/taunano/vicuna-nano ] || cp -r fastchat_spec/models/vicuna-nano runs/taunano/vicuna-nano
export SIZE=nano HEADS=${HEADS:-4} METHODS=${METHODS:-medusa1 medusa2 hydra hydra-pp chimera}
# The trainers save what they have when the limit's SIGTERM stops them; give them a minute to do so.
DISTILL=${DISTILL:-2000} SHARDS=2 DISTILL_BATCH=128 HEAD_STEPS=${HEAD_STEPS:-600} MIX=${MIX:-11000} \
  STAGES="distill heads" timeout ${HEAD_TIMEOUT:-260} bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl \
  runs/taunano /tmp/tauout; echo "heads rc $?"
for _ in $(seq 60); do pgrep -f "fastchat_spec.train.(medusa|chimera|hydra)" >/dev/null || break; sleep 1; done
grep -a "expected tokens" runs/taunano/heads_*.log
cp /tmp/tauout/train_*.json runs/taunano/stages.log "$OUT"/ 2>/dev/null  # back even if the call is cut short
BASELINES=ar STAGES=bench timeout ${BENCH_TIMEOUT:-180} bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl \
  runs/taunano /tmp/tauout; echo "bench rc $?"
cp /tmp/tauout/tau.json /tmp/tauout/train_*.json runs/taunano/stages.log runs/taunano/*.log "$OUT"/ 2>/dev/null
tail -25 runs/taunano/bench.log; date -u
