# Lent-GPU calls: what the row-batched Hydra and Chimera proposers (HydraSlots, ChimeraSlots; 06119c0, f1b016e)
# change for concurrent clients, on the bundled nano base with briefly trained heads (4 per method, 63-node
# trees), before and after on the same machine and heads. Two calls, back to back on one warm machine:
#   PART=1 (about 5 min): the heads (scripts/device/nano_heads.sh), then python -m fastchat_spec.bench with 1 and
#     8 concurrent clients on 40 held-out prompts against our graphed AR decoder, with this tree ("after") and
#     with the tree before the change ("before", runs/old, run from inside its folder: `python -m` puts the
#     working directory ahead of PYTHONPATH).
#   PART=2 (about 5 min): python -m fastchat_spec.bench.batch_profile on both (a batched step's device time by
#     phase for 1, 2, 4 and 8 rows), then the concurrent GPU check (scripts/gpu_check.py).
# On the `small` base with trained heads (eighteenth session, H200, before the change), 8 clients got 2,140
# (Hydra++) and 1,877 (Chimera) tok/s against our batched AR's 3,947: a batched step of ~6-7 rows cost 8.9 and
# 17.0 ms against 2.7 and 3.8 ms for one row. How many tokens a step accepts depends on the heads; what a step
# costs as rows are added does not.
# Carry: PART=1 .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl runs/old (mkdir -p runs/old && git archive d360c7c
# fastchat_spec ":(exclude)fastchat_spec/models" | tar -x -C runs/old); PART=2 nothing.
source scripts/device_setup.sh >/dev/null; source scripts/stages.sh; date -u
R=$PWD; M="$R/runs/rows/hydra-pp-nano $R/runs/rows/chimera-nano"
if [ "${PART:-1}" = 1 ]; then
  source scripts/device/nano_heads.sh; nano_heads runs/rows 63
  B="--prompts $R/.gpu/prompts.jsonl --num-prompts 40 --max-new-tokens 256 --baselines ar --dtype bfloat16 --concurrency 1,8"
  # shellcheck disable=SC2086  # lists of paths and flags
  timeout "${BENCH_TIMEOUT:-150}" python3 -m fastchat_spec.bench --model-path $M $B --out "$OUT"/after.json \
    > "$OUT"/after.log 2>&1; echo "after rc $?"; grep -a " tau \|^serving" "$OUT"/after.log
  # shellcheck disable=SC2086
  (cd runs/old && timeout "${BENCH_TIMEOUT:-150}" python3 -m fastchat_spec.bench --model-path $M $B \
    --out "$OUT"/before.json > "$OUT"/before.log 2>&1); echo "before rc $?"; grep -a " tau \|^serving" "$OUT"/before.log
else
  [ -f runs/rows/chimera-nano/config.json ] || { echo "no heads here: PART=1 runs first, on this machine"; exit 1; }
  # shellcheck disable=SC2086
  timeout "${PROFILE_TIMEOUT:-200}" python3 -m fastchat_spec.bench.batch_profile --model-path $M --rows 1,2,4,8 \
    --length 512 --prompt-len 256 --steps "${STEPS:-20}" --dtype bfloat16 --device cuda \
    --out "$OUT"/batch_profile.json > "$OUT"/batch_profile.log 2>&1; echo "batch_profile rc $?"
  grep -a " ms/step \|tied to" "$OUT"/batch_profile.log
  timeout "${CHECK_TIMEOUT:-180}" python3 scripts/gpu_check.py --out "$OUT"/gpu_check.json > "$OUT"/gpu_check.log 2>&1
  echo "gpu_check rc $?"; grep -a "FAILURES\|float32:\|bfloat16:" "$OUT"/gpu_check.log | tail -4 | cut -c1-300
fi; date -u
