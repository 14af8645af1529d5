# The three lent-GPU calls of the thirteenth session (2026-12-07, NVIDIA H100 80GB HBM3, one warm machine),
# at commit 61ba6b1, in order. Carries as named in scripts/device/*.sh (built by scripts/device/prep.sh).

# call 1 (06:27-06:33 UTC): carry .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl
bash scripts/device/tau_1.sh
#   base: done (held-out loss 2.5237); distill: shard 3 of 4 died of CUDA out-of-memory (4 processes x batch 128
#   on 80 GB; the script was sized on the H200's 139 GB), so the merge failed.

# call 2 (06:34-06:41 UTC): carry .gpu/prompts.jsonl .gpu/cllm_xz
# The merge, written in haste, globbed part* and so also took the 4 input files (*.in: ShareGPT's human-written
# answers) beside the 3 answer files: 8,750 conversations, 3,750 of them the base's own answers.
python3 -c "
import json,glob
parts=sorted(glob.glob('runs/tau/distilled-small.json.part*')); rows=[]
for p in parts: rows+=json.load(open(p))
json.dump(rows,open('runs/tau/distilled-small.json','w')); print(parts,len(rows))
"
bash scripts/device/tau_2.sh
#   heads: 8 Chimera heads reached step ~500 of 1,200 when the 240 s timeout stopped them (beside the CLLM
#   rounds); nothing saved, so the bench found no checkpoint. CLLM rounds on the `small` base: round 0 and 1
#   measured, round 2 trained and stopped by the 420 s timeout before its measurement.

# call 3 (06:41-06:42 UTC): carry .gpu/whl_min; the eager-graph part and bench.attention only (device time left)
EAGER_TIMEOUT=150 FREEZE_TIMEOUT=1 ATTN_TIMEOUT=60 bash scripts/device/attention_flex.sh
