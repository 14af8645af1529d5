# The six lent-GPU calls of the fourteenth session (2026-12-07, NVIDIA H100 80GB HBM3, one warm machine from
# 08:01 to 08:27 UTC), at commit 8b1a44a, in order. Carries as named in scripts/device/*.sh
# (built by scripts/device/prep.sh). Each callN-* folder holds what that call wrote to $OUT.

# call 1 (08:01-08:08): carry .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl
bash scripts/device/tau_1.sh 2>&1 | tail -40
#   base 104.3M parameters in 243.3 s, held-out loss 2.5631; 5,000 distilled answers (4 processes of 64)

# call 2 (08:08-08:11): no carry
bash scripts/device/tau_2.sh 2>&1 | tail -30
#   8 Chimera heads on the 5,000 answers alone, 1,000 steps (3.19 epochs, 146 s); expected tokens/step 1.77:
#   overfit (train top-1 0.93/0.91, held-out 0.25/0.21); not benchmarked

# call 3 (08:12-08:17): carry .gpu/prompts.jsonl. The same heads on the answers mixed with the first 11,000
# training conversations (what MIX=11000 in scripts/small_tau.sh now does: mix_conversations in
# fastchat_spec/train/data.py, the same shuffle), then the tau bench against our AR.
source scripts/device_setup.sh >/dev/null; date -u; python3 - <<'PY'
import json,random
d=json.load(open('runs/tau/distilled-small.json')); t=json.load(open('runs/small_data/train.json'))
random.seed(0); mix=d+t[:11000]; random.shuffle(mix); json.dump(mix,open('runs/tau/mix.json','w')); print(len(d),len(t),len(mix))
PY
rm -rf runs/tau/chimera-vicuna-small
timeout 330 python3 -m fastchat_spec.train.chimera --chimera_num_heads 8 --chimera_num_layers 1 \
  --model_name_or_path runs/tau/vicuna-small --output_dir runs/tau/chimera-vicuna-small --data_path runs/tau/mix.json \
  --eval_data_path runs/small_data/heldout.json --per_device_train_batch_size 16 --max_steps 1000 \
  --model_max_length 1024 --logging_steps 250 --disable_tqdm True --dataloader_num_workers 2 --tree_nodes 63 \
  > runs/tau/heads_mix.log 2>&1; echo "heads rc $?"
cp runs/tau/chimera-vicuna-small/train_report.json $OUT/train_chimera_mix.json; cp runs/tau/heads_mix.log $OUT/
HEADS=8 METHODS=chimera BASELINES=ar STAGES=bench timeout 200 bash scripts/small_tau.sh runs/small_data \
  .gpu/prompts.jsonl runs/tau /tmp/tauout; echo "bench rc $?"
cp /tmp/tauout/tau.json runs/tau/bench.log $OUT/ 2>/dev/null; tail -25 runs/tau/bench.log; date -u
#   chimera: tau 5.10 | 998.8 tok/s | 1.51x vs our AR (661.6 tok/s) | ms/step step 3.75, other 0.07
#   Afterwards, here (not on the GPU), tau on answers that loop and that do not, with the committed summary:
#   PYTHONPATH=. python -c "import json; from fastchat_spec.bench.__main__ import _summary; \
#     d=json.load(open('benchmarks/raw/tau-cllm-gpucheck-h100-2026-12-07-fourteenth/call3-heads-mix-bench/tau.json')); \
#     print(_summary(d['prompts'], 'chimera', ['ar'])['by_repetition'])"
#   -> varied 8 prompts tau 3.83 (1.11x our AR); repetitive 32 prompts tau 5.31 (1.57x)

# call 4 (08:17-08:23): carry .gpu/cllm_xz
EXTRA="--ar_target labels" ROUNDS=2 CLLM_TIMEOUT=500 bash scripts/device/cllm_small.sh 2>&1 | tail -30
#   round 0 1.077 / 1.043 ppl 13.38; round 1 1.092 / 1.081 15.53 (+16.1%); round 2 1.158 / 1.125 16.98 (+26.9%)

# call 5 (08:23-08:25): carry .gpu/whl_min
source scripts/device_setup.sh >/dev/null; date -u; timeout 330 python3 scripts/gpu_check.py \
  --out $OUT/gpu_check.json 2>&1 | grep -v Warning | tail -25; echo "rc $?"; date -u
#   float32 FAILURES: medusa/5-heads-wide-tree, chimera/published-3-heads

# call 6 (08:25-08:27): carry .gpu/whl_min
source scripts/device_setup.sh >/dev/null; timeout 200 python3 scripts/gpu_check.py --out $OUT/gpu_check2.json 2>&1 \
  | grep -a "FAIL" | cut -c1-600; python3 -c "import torch;print(torch.backends.cuda.matmul.allow_tf32, \
  torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)"; echo rc $?
#   float32 FAILURES in 7 cases (different ones); TF32 matmul off, float32 precision "highest"
