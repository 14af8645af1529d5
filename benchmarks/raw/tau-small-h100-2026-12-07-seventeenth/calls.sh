# The three lent-GPU calls of the seventeenth session (2026-12-07, NVIDIA H100 80GB HBM3, one warm machine from
# 15:45 to 16:06 UTC), at commit be388ef, in order: issue 15's per-method comparison on one `small` base,
# Hydra++ and Chimera with 8 heads each, side by side in one benchmark run. The machine came at the first try.
# Each callN-* folder holds what that call wrote to $OUT (files over 20 KB as .xz; read them with xzcat).

# call 1 (15:45-15:55, 547 s): carry .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl
bash scripts/device/tau_1.sh
#   The `small` base (104.3M parameters, 263 s, held-out loss 2.540), then its greedy answers to 5,000 training
#   prompts (four processes of 64, 3.5 minutes, every batch fitted).

# call 2 (15:55-16:02, 397 s): no carry
METHODS="hydra-pp chimera" HEAD_TIMEOUT=440 bash scripts/device/tau_2.sh
#   8 Hydra++ heads and 8 Chimera heads at once on the answers shuffled with 11,000 ShareGPT conversations,
#   1,000 steps of 16 each, both finished (Hydra++ 201 s of training, Chimera 324 s; no SIGTERM); trees of 63
#   nodes searched from measured acceptance (expected 2.69 and 2.31 tokens per step).

# call 3 (16:02-16:06, 210 s): carry .gpu/prompts.jsonl
METHODS="hydra-pp chimera" bash scripts/device/tau_3.sh
#   hydra-pp: tau 3.62 | 914.6 tok/s | 1.46x vs our AR (657.0 tok/s) | ms/step step 2.68 | tau 3.06 on the 12 answers that do not loop
#   chimera:  tau 4.81 | 951.1 tok/s | 1.45x vs our AR (657.0 tok/s) | ms/step step 3.75 | tau 3.33 on the 13 answers that do not loop
#   Dynamic tree for the Hydra++ heads (fastchat_spec.train.dynamic_tree): +1 to +4% tokens per step over the
#   best static tree at 7 to 127 nodes, nothing at 255.

# Afterwards, on this machine (no GPU): each request's time beyond its steps, by whether its prompt length was new
python3 benchmarks/raw/tau-small-h100-2026-12-07-seventeenth/beyond_steps.py \
  benchmarks/raw/tau-small-h100-2026-12-07-seventeenth/call3-bench/tau.json.xz
#   hydra-pp: 77.1 ms at a new length (32 prompts), 12.1 ms at one seen before (8); chimera 78.1 and 12.2;
#   our AR 0.0. The cause and its fix: benchmarks/raw/first-use-h100-2026-12-07-seventeenth/calls.sh.
