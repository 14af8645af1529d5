# The seven lent-GPU calls of the fifteenth session (2026-12-07, NVIDIA H100 80GB HBM3, one warm machine from
# 10:31 to 10:59 UTC), at commit 8e0bd2d, in order. Carries as named in scripts/device/*.sh (built by
# scripts/device/prep.sh). Each callN-* folder holds what that call wrote to $OUT.

# call 1 (10:31-10:39): carry .gpu/whl_min
bash scripts/device/gpu_check_streams.sh
#   stream1-a (FASTCHAT_SPEC_PREFILL_STREAM=1): rc 0; stream1-b (=1): rc 0; stream0 (=0): rc 0
#   float32: all 14 cases give FastChat's greedy text on every prompt, alone, 16 at a time and next to sampled
#   requests (each log ends "float32: every method exact alone and batched"). bf16: batched = alone and
#   next-to-sampled = alone in all 14; against FastChat's eager bf16 path 7 of 16 prompts (our AR 8 of 16), as
#   before: different kernels, the same split as BENCHMARKS.md section 4.

# call 2 (10:39-10:48): carry .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl
bash scripts/device/tau_1.sh
#   base 104.3M parameters in 256.3 s, held-out loss 2.5642; 5,000 distilled answers (4 processes of 64);
#   the whole took 502 s and the 500 s limit (then the default CALL_TIMEOUT) cut the merge of the four parts
#   short: runs/tau/distilled-small.json held 3.1 of 6.0 MB. Since then the merge writes aside and renames
#   (scripts/stages.sh distill_sharded) and the limit is 560 s.

# call 3 (10:48): no carry. Failed at once on the truncated answers ("not valid JSON").
METHODS="hydra-pp chimera" HEAD_TIMEOUT=360 bash scripts/device/tau_2.sh

# call 4 (10:48): no carry. The truncated file, looked at.
ls -la runs/tau/; python3 -c "s=open('runs/tau/distilled-small.json').read(); print(len(s))"

# call 5 (10:48-10:53): no carry. The four parts merged again by hand (5,000 answers), then both head sets at
# once on the GPU (5,000 answers + 11,000 ShareGPT conversations = 16,000, 1,000 steps of 16).
python3 -c "
import json
rows=[]
for i in range(4): rows+=json.load(open(f'runs/tau/distilled-small.json.part{i}'))
json.dump(rows, open('runs/tau/distilled-small.json','w')); print(len(rows))" && \
  METHODS="hydra-pp chimera" HEAD_TIMEOUT=290 bash scripts/device/tau_2.sh
#   Hydra++ (8 prefix-MLP heads, 4 layers): done in 253 s beside Chimera (train_runtime 197 s), expected 2.71
#   tokens per step with its tree. Chimera: the limit's SIGTERM reached its DataLoader workers too (`timeout`
#   signals its whole process group), they died, and the trainer crashed before it could save
#   ("DataLoader worker ... is killed by signal: Terminated"). Fixed since: fastchat_spec/train/trainer.py
#   workers_ignore_sigterm (test: tests/test_train_medusa.py, ..._whole_process_group_still_saves_...).

# call 6 (10:53-10:54): carry .gpu/prompts.jsonl
METHODS="hydra-pp" bash scripts/device/tau_3.sh
#   hydra: tau 3.54 | 936.0 tok/s | 1.42x vs our AR (657.4 tok/s) | ms/step step 2.68, other 0.07
#   | tau 3.47 on the 4 answers that do not loop

# call 7 (10:55-10:59): carry .gpu/prompts.jsonl
METHODS="chimera" HEAD_TIMEOUT=235 bash scripts/device/tau_2.sh; \
  METHODS="hydra-pp chimera" bash scripts/device/tau_3.sh 2>&1 | grep -a -E "tau |rc|UTC"
#   Chimera alone reached step ~900 of 1,000 (epoch 0.9 logged) in 235 s, then crashed on the limit's SIGTERM as
#   in call 5, so no Chimera heads and no bench (its tau.json was call 6's, left out here). 43 s of device
#   time were left.
