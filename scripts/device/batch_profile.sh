# Lent-GPU call, on the machine where tau_2.sh trained runs/tau/hydra-pp-vicuna-small and chimera-vicuna-small:
# where the device time of the engine loop's batched speculative step goes as rows are added. On an H200
# (2026-12-07) the graphed step of the small base with 8 Hydra++ heads took 2.68 ms for 1 row with a 64-node tree
# but 8.78 ms for about 6 active rows of an 8-row step (Chimera: 3.77 and 17.0 ms), while our batched AR step went
# from 1.5 to 1.8 ms: at 8 clients speculation gave 2,140 tok/s against AR's 3,947. Hydra and Chimera then drafted
# and updated row by row (one proposer per slot); since the eighteenth session they draft all rows at once
# (HydraSlots, ChimeraSlots), and this call shows what the step still spends per row. fastchat_spec.bench.batch_profile
# runs that step eagerly under torch.profiler with every row active (1, 2, 4 and 8 rows), splits each step's kernel
# time into propose, mask, verify, accept, commit and observe (the top 8 kernels of each), and times the same step
# as a CUDA graph replay. Two lengths: 512 positions with 256-token prompts (the loop's bucket for short chats),
# then 2048 with 1024. About 5 minutes on an H200 (an estimate: most of it is the profiler's processing of the
# eager 8-row steps; STEPS=10 roughly halves that). Each run has its own timeout, so a short lease still returns
# the first. Carry: nothing beyond the tracked files (the wheels and trained heads are still on the machine).
source scripts/device_setup.sh >/dev/null; date -u
M=""; for method in hydra-pp chimera; do
  [ -f runs/tau/$method-vicuna-small/config.json ] && M="$M runs/tau/$method-vicuna-small"
done
[ -n "$M" ] || { echo "no trained heads here: tau_2.sh (METHODS=\"hydra-pp chimera\") runs first, on this machine"; exit 1; }
profile() {  # profile NAME LENGTH PROMPT_LEN: one bench.batch_profile run into $OUT/NAME.json and .log
  # shellcheck disable=SC2086  # a list of paths
  timeout "${PROFILE_TIMEOUT:-280}" python3 -m fastchat_spec.bench.batch_profile --model-path $M --rows 1,2,4,8 \
    --length "$2" --prompt-len "$3" --steps "${STEPS:-20}" --dtype bfloat16 --device cuda --out "$OUT/$1.json" \
    > "$OUT/$1.log" 2>&1; echo "$1 rc $?"
  grep -a " ms/step \|tied to" "$OUT/$1.log"; date -u
}
profile batch_profile_512 512 256
profile batch_profile_2048 2048 1024
