# Lent-GPU call: what an eager forward costs at a prompt length the process has not seen (cuDNN's per-shape
# plan), and what it cost each Hydra++/Chimera request before generate.verify.eager_attention: the benchmark on
# 40 held-out prompts with this tree ("after", with 1 and 8 concurrent clients too) and with the tree before the fix
# ("before"), then the concurrent GPU check (scripts/gpu_check.py). About 5 minutes on an H100 (3.5 of them ran in the seventeenth session).
# Carry: .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl runs/old (scripts/device/prep.sh makes .gpu/; runs/old is the
# tree before the fix: mkdir -p runs/old && git archive be388ef fastchat_spec ":(exclude)fastchat_spec/models" | tar -x -C runs/old).
# The seventeenth session carried the 400 + 24 conversations as runs/ttft/data instead, and ran out of device time
# during "before" (benchmarks/raw/first-use-h100-2026-12-07-seventeenth/calls.sh).
source scripts/device_setup.sh >/dev/null; source scripts/stages.sh; date -u
# 4 heads per method for the bundled nano base, trained here; the time a request takes beyond its steps does not
# depend on how well they draft.
source scripts/device/nano_heads.sh; nano_heads runs/ttft 31
python3 -m fastchat_spec.bench.first_use --out "$OUT"/first_use_nano.json 2>&1 | grep -av Warn
M="runs/ttft/hydra-pp-nano runs/ttft/chimera-nano"
B="--prompts .gpu/prompts.jsonl --num-prompts 40 --max-new-tokens 256 --baselines ar --dtype bfloat16"
# shellcheck disable=SC2086  # lists of paths and flags
timeout ${BENCH_TIMEOUT:-150} python3 -m fastchat_spec.bench --model-path $M $B --concurrency 1,8 --out "$OUT"/after.json \
  > "$OUT"/after.log 2>&1; echo "after rc $?"; grep -a " tau " "$OUT"/after.log
# The tree before the fix runs from its own folder (`python -m` puts the working directory ahead of PYTHONPATH).
R=$PWD; M="$R/runs/ttft/hydra-pp-nano $R/runs/ttft/chimera-nano"; B=${B//.gpu\/prompts.jsonl/$R/.gpu/prompts.jsonl}
# shellcheck disable=SC2086
(cd runs/old && timeout ${BENCH_TIMEOUT:-150} python3 -m fastchat_spec.bench --model-path $M $B \
  --out "$OUT"/before.json > "$OUT"/before.log 2>&1); echo "before rc $?"; grep -a " tau " "$OUT"/before.log
timeout ${CHECK_TIMEOUT:-170} python3 scripts/gpu_check.py --out "$OUT"/gpu_check.json > "$OUT"/gpu_check.log 2>&1
echo "gpu_check rc $?"; grep -a "FAILURES\|float32:\|bfloat16:\|passed\|failed" "$OUT"/gpu_check.log | tail -4 | cut -c1-300; date -u
