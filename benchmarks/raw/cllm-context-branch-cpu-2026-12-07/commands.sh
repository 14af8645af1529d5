# CLLM serving with the context branch (fastchat_spec/generate/proposers/jacobi.py), on this 2-core CPU,
# 2026-12-07, code after c2803ba. Tokens per step are counts, not timings. From the repository root:

# 1. The bundled nano base through the serving engine, as a CLLM with 16-token windows: the window alone
#    (what consistency training is judged by), then as served (with the context branch, 15 tokens).
PYTHONPATH=. python -m fastchat_spec.train.cllm_eval --model-path fastchat_spec/models/vicuna-nano \
  --data_path data/cllm/heldout_all.json --domains code,all --num-prompts 32 --max-new-tokens 128 --window 16 \
  --ppl-conversations 0 --device cpu --out benchmarks/raw/cllm-context-branch-cpu-2026-12-07/window_alone.json
PYTHONPATH=. python -m fastchat_spec.train.cllm_eval --model-path fastchat_spec/models/vicuna-nano \
  --data_path data/cllm/heldout_all.json --domains code,all --num-prompts 32 --max-new-tokens 128 --window 16 \
  --lookup-tokens -1 --ppl-conversations 0 --device cpu --out benchmarks/raw/cllm-context-branch-cpu-2026-12-07/with_context_branch.json

# 2. Look-up alone on the same prompts' greedy answers, split into repetitive and varied answers (a simulation).
python benchmarks/raw/cllm-context-branch-cpu-2026-12-07/greedy_answers.py            # writes benchmarks/raw/cllm-context-branch-cpu-2026-12-07/greedy_nano.json (committed as .xz)
cd benchmarks/raw/cllm-context-branch-cpu-2026-12-07 && python lookup_alone_by_repetition.py > lookup_alone_by_repetition.txt

# 3. Wall time on this CPU (2 cores, float32): the nano base written as two CLLMs (window 16; cllm.lookup_tokens 0,
#    and the served default), each timed next to our AR decoder and FastChat's stock generate_stream on the same
#    weights (a CLLM is its own base, hence a run each), 12 of the 40 held-out prompts of .gpu/prompts.jsonl
#    (scripts/device/prep.sh), 128 tokens. The checkpoints: the Python block of scripts/device/cllm_context.sh.
for name in window context; do
  PYTHONPATH=. python -m fastchat_spec.bench --model-path runs/cllm-context/cllm-nano-$name --prompts .gpu/prompts.jsonl \
    --num-prompts 12 --max-new-tokens 128 --baselines ar,fastchat --device cpu --out benchmarks/raw/cllm-context-branch-cpu-2026-12-07/bench_$name.json > benchmarks/raw/cllm-context-branch-cpu-2026-12-07/bench_$name.log
done   # bench_*.json committed as .xz
