# Lent-GPU call: what an eager forward costs at a prompt length the process has not seen (cuDNN's per-shape
# plan), and what it cost each Hydra++/Chimera request before generate.verify.eager_attention: the benchmark on
# 40 held-out prompts with this tree ("after", with 8 concurrent clients too) and with the tree before the fix
# ("before"), then the concurrent GPU check (scripts/gpu_check.py). About 5 minutes on an H100.
# Carry: .gpu/whl_min .gpu/prompts.jsonl runs/ttft/data runs/old, where runs/ttft/data holds the first 400 training
# and 24 held-out conversations of the small_data split (train400.json, heldout24.json), and runs/old the tree
# before the fix: mkdir -p runs/old && git archive be388ef fastchat_spec ":(exclude)fastchat_spec/models" | tar -x -C runs/old
source scripts/device_setup.sh >/dev/null; source scripts/stages.sh; date -u
# 4 heads per method for the bundled nano base, trained briefly here (their float32 weights are too large to
# carry); the time a request takes beyond its steps does not depend on how well they draft.
for method in hydra-pp chimera; do
  # shellcheck disable=SC2046  # the recipe is a module and its flags
  python3 -m $(head_recipe "$method" 4) --model_name_or_path fastchat_spec/models/vicuna-nano \
    --output_dir runs/ttft/$method-nano --data_path runs/ttft/data/train400.json \
    --eval_data_path runs/ttft/data/heldout24.json --per_device_train_batch_size 8 --max_steps ${HEAD_STEPS:-100} \
    --model_max_length 512 --logging_steps 50 --disable_tqdm True --dataloader_num_workers 0 --tree_nodes 31 \
    > "$OUT"/heads_$method.log 2>&1 &
done; wait; grep -a "wrote" "$OUT"/heads_*.log
python3 -m fastchat_spec.bench.first_use --out "$OUT"/first_use_nano.json 2>&1 | grep -av Warn
M="runs/ttft/hydra-pp-nano runs/ttft/chimera-nano"
B="--prompts .gpu/prompts.jsonl --num-prompts 40 --max-new-tokens 256 --baselines ar --dtype bfloat16"
# shellcheck disable=SC2086  # lists of paths and flags
timeout ${BENCH_TIMEOUT:-150} python3 -m fastchat_spec.bench --model-path $M $B --concurrency 8 --out "$OUT"/after.json \
  > "$OUT"/after.log 2>&1; echo "after rc $?"; grep -a " tau " "$OUT"/after.log
# shellcheck disable=SC2086
PYTHONPATH=$PWD/runs/old:$PYTHONPATH timeout ${BENCH_TIMEOUT:-150} python3 -m fastchat_spec.bench --model-path $M $B \
  --out "$OUT"/before.json > "$OUT"/before.log 2>&1; echo "before rc $?"; grep -a " tau " "$OUT"/before.log
timeout ${CHECK_TIMEOUT:-170} python3 scripts/gpu_check.py --out "$OUT"/gpu_check.json > "$OUT"/gpu_check.log 2>&1
echo "gpu_check rc $?"; grep -a "FAILURES\|passed\|failed" "$OUT"/gpu_check.log | tail -3 | cut -c1-300; date -u
