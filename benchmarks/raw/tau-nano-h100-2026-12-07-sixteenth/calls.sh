# The four lent-GPU calls of the sixteenth session (2026-12-07, NVIDIA H100 80GB HBM3, one warm machine from
# 14:43 to 14:49 UTC), at commit d1a8c33, in order. Before them, from 13:07 to 14:41, eleven tries found no
# machine (H100 or H200) and cost 1,330 of the session's 1,800 s of device time, so the three tau calls on the
# `small` base (about 1,400 s) no longer fitted; scripts/device/tau_nano.sh was written for what was left.
# Each callN-* folder holds what that call wrote to $OUT (logs over 20 KB and the bench outputs as .xz).

# call 1 (14:43-14:46): carry .gpu/whl_min .gpu/small_xz .gpu/prompts.jsonl
METHODS="medusa1 hydra-pp chimera" DISTILL=1000 MIX=5000 HEAD_TIMEOUT=150 BENCH_TIMEOUT=120 bash scripts/device/tau_nano.sh
#   The bundled nano base answered 1,000 training prompts (2 processes, 53 s); 4 heads per method then trained
#   at once on those answers plus 5,000 ShareGPT conversations, 600 steps of 16. Medusa-1 (expected 1.40 tokens
#   per step with its tree) and Hydra++ (2.25) saved in 73 and 89 s. Chimera trained its 600 steps (71.6 s) but
#   the 150 s limit's SIGTERM reached it while it measured its heads, after training, when the default handler
#   was back: it died unsaved, and the bench refused its folder ("has no config.json"). Fixed since:
#   fastchat_spec/train/trainer.py saving_on_sigterm around each trainer's whole train-measure-save
#   (test: tests/test_train_medusa.py::test_sigterm_after_the_last_step_still_measures_and_saves).

# call 2 (14:46): no carry. Failed at once: without a carry of .gpu/prompts.jsonl the machine's copy is removed.
source scripts/device_setup.sh >/dev/null; tail -5 runs/taunano/heads_chimera.log | cut -c1-400; SIZE=nano METHODS="medusa1 hydra-pp" BASELINES=ar STAGES=bench timeout 170 bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/taunano /tmp/tauout; echo "bench rc $?"; cp /tmp/tauout/tau.json /tmp/tauout/train_*.json runs/taunano/bench.log "$OUT"/; date -u

# call 3 (14:46-14:47): carry .gpu/prompts.jsonl. Medusa-1 and Hydra++ side by side in one bench run.
source scripts/device_setup.sh >/dev/null; M="medusa1 hydra-pp"; [ -f runs/taunano/chimera-vicuna-nano/config.json ] && M="$M chimera"; echo "methods: $M"; SIZE=nano METHODS="$M" BASELINES=ar STAGES=bench timeout 170 bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/taunano /tmp/tauout; echo "bench rc $?"; cp /tmp/tauout/tau.json runs/taunano/bench.log "$OUT"/; for m in $M; do cp runs/taunano/$m-vicuna-nano/train_report.json "$OUT"/train_$m.json; done; date -u
#   medusa1: tau 1.87 | 2621.9 tok/s | 1.15x vs our AR (2292.7 tok/s) | ms/step step 0.67
#   hydra-pp: tau 3.02 | 1816.7 tok/s | 0.79x vs our AR (2292.7 tok/s) | ms/step step 1.21

# call 4 (14:47-14:49): carry .gpu/prompts.jsonl. Chimera alone: 400 steps on the 1,000 answers only (MIX was
# not set: a shorter recipe than call 1's), then its own bench run against the same graphed AR decoder.
source scripts/device_setup.sh >/dev/null; SIZE=nano HEADS=4 METHODS=chimera HEAD_STEPS=400 STAGES=heads timeout 100 bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/taunano /tmp/tauout; for _ in $(seq 30); do pgrep -f fastchat_spec.train >/dev/null || break; sleep 1; done; tail -c 300 runs/taunano/heads_chimera.log; cp runs/taunano/heads_chimera.log runs/taunano/chimera-vicuna-nano/train_report.json "$OUT"/; SIZE=nano METHODS=chimera BASELINES=ar STAGES=bench timeout 50 bash scripts/small_tau.sh runs/small_data .gpu/prompts.jsonl runs/taunano /tmp/tauout2 | tail -3; cp /tmp/tauout2/tau.json "$OUT"/tau_chimera.json
#   chimera: tau 2.73 | 1319.9 tok/s | 0.58x vs our AR (2286.3 tok/s) | ms/step step 1.61
#   72 s of device time were left.
