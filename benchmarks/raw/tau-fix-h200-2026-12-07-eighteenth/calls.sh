# The eighteenth session's lent-GPU calls (2026-12-07, NVIDIA H200, one warm machine from about 17:57 to
# 18:23 UTC), at commit 7ed05ba (calls 1-3 with scripts/device/tau_fix.sh as first written, uncommitted): the
# `small` run of the seventeenth session again, to measure generate.verify.eager_attention (a731ab2) on it, before
# and after, on the same base and heads; then 8 clients at once; and the concurrent GPU check of that change.
# The first try (17:56) found no machine and cost 181 s; the machine that came was an H200, not an H100, so these
# figures are not side by side with the seventeenth session's (tau-small-h100-2026-12-07-seventeenth).
# Each callN-* folder holds what that call wrote to $OUT (files over 20 KB as .xz; charts left out).

# call 1 (18:00-18:07, 441 s; 214 s of start before it): carry .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl
DISTILL=3000 bash scripts/device/tau_1.sh
#   The `small` base (104.3M parameters, 236 s, held-out loss 2.562), then its greedy answers to 3,000 training
#   prompts (not 5,000 as in the seventeenth session, to leave device time for the rest; four processes, 2 min).

# call 2 (18:07-18:13, 359 s): no carry
METHODS="hydra-pp chimera" HEAD_TIMEOUT=440 bash scripts/device/tau_2.sh
#   8 Hydra++ and 8 Chimera heads at once on the answers shuffled with 11,000 ShareGPT conversations, 1,000 steps
#   of 16, both finished (Hydra++ 187 s of training, Chimera 297 s); trees of 63 nodes searched from measured
#   acceptance (expected 2.75 and 2.34 tokens per step).

# call 3 (18:14-18:19, 320 s): carry .gpu/prompts.jsonl runs/old (runs/old: the tree at be388ef, before the fix:
# mkdir -p runs/old && git archive be388ef fastchat_spec ":(exclude)fastchat_spec/models" | tar -x -C runs/old)
bash scripts/device/tau_fix.sh
#   after (this tree):
#     hydra-pp-vicuna-small: tau 3.47 | 1143.0 tok/s | 1.73x vs our AR (660.9 tok/s) | first token 8.2 ms (our AR 4.2)
#     chimera-vicuna-small:  tau 4.40 | 1111.6 tok/s | 1.68x vs our AR (660.9 tok/s) | first token 8.0 ms (our AR 4.2)
#   "before": ran this tree a second time (same-tree-twice.*: 1.73x and 1.68x again). The script set
#   PYTHONPATH=runs/old, but `python -m` puts the working directory ahead of PYTHONPATH, so the repository's own
#   fastchat_spec was imported. tau_fix.sh and first_use.sh now run the old tree from inside runs/old. The
#   seventeenth session's cut "before" run (first-use-h100-2026-12-07-seventeenth) had the same fault.
#   python3 scripts/gpu_check.py (FASTCHAT_SPEC_PREFILL_STREAM=1, the default), rc 0:
#     float32: all 13 method cases and our AR give FastChat's greedy text alone; 16 at a time and next to 8
#     sampled requests each gives its alone text (100% everywhere); bfloat16: batched == alone 100%.

# call 4 (18:19-18:21, 94 s): the tree before the fix, run from its own folder, same heads and prompts
source scripts/device_setup.sh >/dev/null; R=$PWD; cd runs/old && python3 -c "import fastchat_spec.generate.verify as v
print(v.__file__, hasattr(v, 'eager_attention'))" && timeout 200 python3 -m fastchat_spec.bench --model-path \
  $R/runs/tau/hydra-pp-vicuna-small $R/runs/tau/chimera-vicuna-small --prompts /tmp/tauout/prompts.jsonl \
  --num-prompts 40 --max-new-tokens 256 --baselines ar --dtype bfloat16 --out $OUT/before.json > $OUT/before.log 2>&1
#   /work/main/runs/old/fastchat_spec/generate/verify.py False
#     hydra-pp-vicuna-small: tau 3.47 | 907.8 tok/s | 1.40x vs our AR (661.6 tok/s)
#     chimera-vicuna-small:  tau 4.40 | 862.1 tok/s | 1.30x vs our AR (661.6 tok/s)

# call 5 (18:21-18:22, 95 s): 8 clients at once, this tree
source scripts/device_setup.sh >/dev/null; timeout 200 python3 -m fastchat_spec.bench --model-path \
  runs/tau/hydra-pp-vicuna-small runs/tau/chimera-vicuna-small --prompts /tmp/tauout/prompts.jsonl --num-prompts 40 \
  --max-new-tokens 256 --baselines ar --dtype bfloat16 --concurrency 8 --out $OUT/conc8.json > $OUT/conc8.log 2>&1
#   serving hydra-pp-vicuna-small x8: 2139.9 tok/s aggregate, p50 latency 0.554 s, tau 3.47, 5.9 rows/step of 64
#     tree nodes, 8.87 ms/step
#   serving chimera-vicuna-small x8: 1877.1 tok/s aggregate, p50 0.860 s, tau 4.40, 6.9 rows/step, 17.01 ms/step
#   serving ar x8: 3947.0 tok/s aggregate, p50 0.461 s, 7.3 rows/step, 1.81 ms/step
#   (1 client in the same run: 1.73x and 1.67x our AR, as in call 3.)

# call 6 (18:22-18:23, 59 s): the same for Hydra++ alone on 16 prompts (the loop's split of its time)
source scripts/device_setup.sh >/dev/null; timeout 150 python3 -m fastchat_spec.bench --model-path \
  runs/tau/hydra-pp-vicuna-small --prompts /tmp/tauout/prompts.jsonl --num-prompts 16 --max-new-tokens 256 \
  --baselines ar --dtype bfloat16 --concurrency 8 --profile-prompts 2 --out $OUT/prof.json > $OUT/prof.log 2>&1
#   serving hydra x8: 2342.3 tok/s aggregate, 5.9 rows/step of 64 tree nodes, 8.78 ms/step; loop split: steps
#   1.554 s, prompt forwards 0.069 s, host 0.0003 s of 1.588 s. serving ar x8: 3017.5 tok/s, 1.80 ms/step.
#   So at 8 clients the time is in the batched steps themselves: 8.8 ms for ~6 rows against 2.7 ms for one.

# Afterwards, on this machine (no GPU): each request's time beyond its steps, by whether its length was new
D=benchmarks/raw/tau-fix-h200-2026-12-07-eighteenth
python3 benchmarks/raw/tau-small-h100-2026-12-07-seventeenth/beyond_steps.py $D/call4-before/before.json.xz
#   hydra-pp: 78.5 ms at a new length (32 prompts), 15.2 at one seen before (8); chimera 76.3 and 14.2; our AR 0.0
python3 benchmarks/raw/tau-small-h100-2026-12-07-seventeenth/beyond_steps.py $D/call3-after-before-check/after.json.xz
#   hydra-pp: 6.0 ms at a new length, 15.4 at one seen before; chimera 4.6 and 14.5; our AR 0.0
