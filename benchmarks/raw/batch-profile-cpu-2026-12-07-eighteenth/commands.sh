# The eighteenth session's CPU profile of a batched step with 1 and 8 rows (this 2-core machine, no GPU,
# 2026-12-07): Hydra and Chimera drafting all rows at once (this tree) against row by row (row_by_row.py).
# CPU op time per eager step; on the CPU the arithmetic itself grows with the rows, so this only shows the
# direction. The GPU figures are for scripts/device/batch_profile.sh.
D=benchmarks/raw/batch-profile-cpu-2026-12-07-eighteenth
PYTHONPATH=$PWD python3 $D/make_heads.py /tmp/prof
A="--model-path /tmp/prof/hydra-pp-vicuna-nano /tmp/prof/chimera-vicuna-nano --rows 1,8 --steps 10 --prompt-len 64 --length 512 --device cpu --dtype float32"
# shellcheck disable=SC2086
PYTHONPATH=$PWD python3 -m fastchat_spec.bench.batch_profile $A --out $D/batched.json && xz -9 $D/batched.json
# shellcheck disable=SC2086
PYTHONPATH=$PWD python3 $D/row_by_row.py $A --out $D/row_by_row.json && xz -9 $D/row_by_row.json
#   ms per step, 8 rows (1 row), at f1b016e (proposers attend to the step's length bucket):
#     Hydra++  batched:    propose 18.7 | observe 2.9  | whole step 81.4  (1 row: 21.6)
#              row by row: propose 58.1 | observe 12.5 | whole step 122.0
#     Chimera  batched:    propose 48.1 | observe 2.2  | whole step 100.0 (1 row: 38.2)
#              row by row: propose 182.4 | observe 12.1 | whole step 247.7
#   (single runs on a shared 2-core CPU: a few ms of noise; an earlier pair of 5 steps each, before the length
#   change, gave Hydra++ propose 15.2 against 100.9 and Chimera 99.5 against 209.1)
