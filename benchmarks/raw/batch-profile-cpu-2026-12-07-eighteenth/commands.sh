# The eighteenth session's CPU profile of a batched step with 1 and 8 rows (this 2-core machine, no GPU,
# 2026-12-07): Hydra and Chimera drafting all rows at once (this tree) against row by row (row_by_row.py).
# CPU op time per eager step; on the CPU the arithmetic itself grows with the rows, so this only shows the
# direction. The GPU figures are for scripts/device/batch_profile.sh.
D=benchmarks/raw/batch-profile-cpu-2026-12-07-eighteenth
PYTHONPATH=$PWD python3 $D/make_heads.py /tmp/prof
A="--model-path /tmp/prof/hydra-pp-vicuna-nano /tmp/prof/chimera-vicuna-nano --rows 1,8 --steps 5 --prompt-len 64 --length 512 --device cpu --dtype float32"
# shellcheck disable=SC2086
PYTHONPATH=$PWD python3 -m fastchat_spec.bench.batch_profile $A --out $D/batched.json && xz -9 $D/batched.json
# shellcheck disable=SC2086
PYTHONPATH=$PWD python3 $D/row_by_row.py $A --out $D/row_by_row.json && xz -9 $D/row_by_row.json
#   ms per step (propose / whole step), 8 rows: Hydra++ 15.2 / 81.3 batched, 100.9 / 192.3 row by row (1 row:
#   6.5 / 18.6); Chimera 99.5 / 172.9 batched, 209.1 / 281.1 row by row (1 row: 22.7 / 34.8)
