# Lent-GPU call 2 of the tau run (issue 15), the next call on the machine tau_1.sh ran on: 8 Chimera heads on the
# base's answers, alone on the GPU (HEAD_STEPS steps, then the tree searched from measured acceptance, saved).
# On an H100 the heads took about 0.5 s a step while sharing the GPU with CLLM rounds (thirteenth session), so
# 1,000 steps alone should end inside the limit; if not, the timeout's SIGTERM makes the trainer save what it
# has. Carry: nothing beyond the tracked files (the wheels, base and answers are still on the machine).
# Next: tau_3.sh.
source scripts/device_setup.sh >/dev/null; date -u
[ -f runs/tau/distilled-small.json ] || { echo "no runs/tau here: tau_1.sh runs first, on this machine"; exit 1; }
HEADS=8 METHODS=chimera HEAD_STEPS=${HEAD_STEPS:-1000} STAGES=heads timeout ${HEAD_TIMEOUT:-480} \
  bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/tau /tmp/tauout; echo "heads rc $?"
# A timeout's SIGTERM reaches the trainer too: it stops after its step and saves the heads it has; give it a
# minute to do so before the call returns (which would kill it).
for _ in $(seq 60); do pgrep -f fastchat_spec.train.chimera >/dev/null || break; sleep 1; done
cp runs/tau/chimera-vicuna-small/train_report.json "$OUT"/train_chimera.json 2>/dev/null
cp runs/tau/heads_chimera.log "$OUT"/ 2>/dev/null
grep -a "expected\|saved\|train_runtime" runs/tau/heads_chimera.log | tail -5; date -u
