# Twentieth session, one lent-GPU call (the device tool gave an NVIDIA H100 80GB HBM3, 2026-12-08 00:38 UTC), code
# 02c24ef (sampled requests in the batched step, 0ed043b..02c24ef), carrying .gpu/whl_min and .gpu/prompts.jsonl:
CHECK_TIMEOUT=210 BENCH_TIMEOUT=100 PROMPTS=16 PROFILE_TIMEOUT=45 bash scripts/device/sampled_rows.sh
# What it ran (scripts/device/sampled_rows.sh):
#   python3 scripts/gpu_check.py --out gpu_check.json        (stopped by its 210 s timeout during the last part,
#                                                             --load-8bit: 1 of 4 methods checked; gpu_check.log)
#   FASTCHAT_SPEC_SAMPLED_STEP=1 (after) / 0 (before) python3 -m fastchat_spec.bench \
#     --model-path fastchat_spec/models/medusa-vicuna-nano --prompts .gpu/prompts.jsonl --num-prompts 16 \
#     --max-new-tokens 128 --baselines ar --dtype bfloat16 --temperature 0.7 --concurrency 1,8 --out sampled_WHEN.json
#   python3 -m fastchat_spec.bench.batch_profile --model-path fastchat_spec/models/medusa-vicuna-nano --rows 1,8 \
#     --length 512 --prompt-len 256 --steps 20 --dtype bfloat16 --device cuda --temperature T --out profile_tT.json
# The call returned at most 8 files: sampled_before.json/.log were left behind; the call's printed lines
# (call_output.txt) hold the "before" run's figures.
