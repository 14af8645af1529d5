# Lent-GPU call: what the Jacobi proposer's context branch (lookahead-style guesses copied from the context, beside
# the window; nineteenth session) does to wall time, not only to steps. The bundled nano base is written twice as a
# CLLM with 16-token windows, once with the branch off (cllm.lookup_tokens 0: the window alone) and once as served
# (15 tokens copied), and python -m fastchat_spec.bench times each (a run per checkpoint: a CLLM is its own
# base) on the same 40 held-out prompts next to our graphed AR decoder (1 and 8 clients). Then
# scripts/gpu_check.py (every CLLM case runs with the branch on).
# About 4 minutes. On this CPU the branch took the nano base from 1.05 / 1.04 to 2.60 / 2.81 tokens per step
# (code / general; BENCHMARKS.md, "CLLM served with a context branch"); a step now verifies 31 nodes, not 16.
# Carry: .gpu/whl_min .gpu/prompts.jsonl
source scripts/device_setup.sh >/dev/null; date -u
python3 - <<'PYEOF'
from transformers import AutoModelForCausalLM, AutoTokenizer

from fastchat_spec.adapters.cllm import write_cllm_checkpoint

base = "fastchat_spec/models/vicuna-nano"
model, tok = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base, use_fast=False)
write_cllm_checkpoint("runs/cllm-context/cllm-nano-window", model, tok, 16, {"lookup_tokens": 0})
write_cllm_checkpoint("runs/cllm-context/cllm-nano-context", model, tok, 16)
PYEOF
# A CLLM is its own base, so each checkpoint is a run of its own, next to our AR decoder on the same weights.
for name in window context; do
  timeout "${BENCH_TIMEOUT:-100}" python3 -m fastchat_spec.bench --model-path runs/cllm-context/cllm-nano-$name \
    --prompts .gpu/prompts.jsonl --num-prompts 40 --max-new-tokens 256 --baselines ar --dtype bfloat16 \
    --concurrency 1,8 --out "$OUT"/cllm_$name.json > "$OUT"/cllm_$name.log 2>&1; echo "bench $name rc $?"
  grep -a " tau \|^serving" "$OUT"/cllm_$name.log
done
timeout "${CHECK_TIMEOUT:-200}" python3 scripts/gpu_check.py --out "$OUT"/gpu_check.json > "$OUT"/gpu_check.log 2>&1
echo "gpu_check rc $?"; grep -a "FAILURES\|float32:" "$OUT"/gpu_check.log | tail -2 | cut -c1-300; date -u
