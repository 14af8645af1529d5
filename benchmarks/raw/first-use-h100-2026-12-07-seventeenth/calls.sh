# The seventeenth session's fourth lent-GPU call (2026-12-07, NVIDIA H100 80GB HBM3, 16:50-16:53 UTC), at commit
# a731ab2: why a speculative request took ~77 ms beyond its steps when its prompt length was new to the process
# (benchmarks/raw/tau-small-h100-2026-12-07-seventeenth/calls.sh), and the fix. Two tries before it found no
# machine (270 s of device time between them), so the call had the 180 s left: it was cut during the
# "before" benchmark (the tree before the fix), and the concurrent GPU check did not run.
# call4-first-use holds what it wrote to $OUT (after.json as .xz; its chart left out).

# call 4: carry .gpu/whl_min .gpu/prompts.jsonl runs/ttft/data runs/old (scripts/device/first_use.sh says how)
HEAD_STEPS=30 BENCH_TIMEOUT=90 bash scripts/device/first_use.sh
#   Heads: 4 Hydra++ and 4 Chimera heads for the bundled nano base, 30 steps of 8 (expected 1.53 and 1.38 tokens
#   per step: barely trained; the time beyond the steps does not depend on them).
#   python -m fastchat_spec.bench.first_use (nano base, bf16; 12 lengths per policy, each new to the process):
#     default (SDPA picks cuDNN): first call 50.03 ms, again 3.59 ms (median)
#     no-cudnn (generate.verify.eager_attention): first call 8.88 ms, again 3.47 ms
#   python -m fastchat_spec.bench --model-path runs/ttft/hydra-pp-nano runs/ttft/chimera-nano --prompts
#     .gpu/prompts.jsonl --num-prompts 40 --max-new-tokens 256 --baselines ar --dtype bfloat16 --concurrency 8:
#     hydra-pp-nano: tau 1.73 | 1665.7 tok/s | 0.73x vs our AR (2288.1 tok/s) | first token 6.2 ms (our AR 1.8)
#     chimera-nano:  tau 1.50 | 1134.1 tok/s | 0.50x vs our AR (2288.1 tok/s) | first token 5.9 ms (our AR 1.8)
#     8 clients at once, 40 requests each, all answered: hydra-pp 3,168 tok/s aggregate (6.9 rows per batched
#     step), chimera 1,581 (6.7), our AR 12,178 (7.4). (One level of clients: texts were not compared.)
#   The "before" run (PYTHONPATH=runs/old) reached prompt 37 of 40 when the device time ran out: no result.

# Afterwards, on this machine (no GPU): each request's time beyond its steps in the "after" run
python3 benchmarks/raw/tau-small-h100-2026-12-07-seventeenth/beyond_steps.py \
  benchmarks/raw/first-use-h100-2026-12-07-seventeenth/call4-first-use/after.json.xz
#   hydra-pp-nano: 6.2 ms at a new length (32 prompts), 17.2 at one seen before (8, all 1,791 tokens long);
#   chimera-nano: 5.5 and 29.3; our AR 0.0.
