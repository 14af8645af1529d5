# Call 1 (H100 80GB HBM3, 2026-12-07 02:31 UTC): code at 1bc9663 (the bench tools of that commit on 2429612).
# The Llama-7B projection GEMMs alone, plain and split-K (fastchat_spec.bench.gemms), then the 64-node tree step
# with Inductor's decompose-K offered for every GEMM (freezing + max-autotune), then the default freezing run
# beside it. Carry: .gpu/whl_train .gpu/steps_gemms_dk.sh
mkdir -p .whl && cp .gpu/whl_train/*.whl .whl/
source scripts/device_setup.sh >/dev/null; date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 120 python3 -m fastchat_spec.bench.gemms --shapes llama7b --rows 1,16,64 --splits 1,2,4,8 --out $OUT/gemms.json \
  > $OUT/gemms.log 2>&1; echo "gemms rc $?"; cat $OUT/gemms.log | tail -50; date -u
TORCHINDUCTOR_DECOMPOSE_K_THRESHOLD=0 FASTCHAT_SPEC_COMPILE_FREEZE=1 FASTCHAT_SPEC_COMPILE_MODE=max-autotune-no-cudagraphs \
  timeout 270 python3 -m fastchat_spec.bench.steps --shapes llama7b --compile 1 --out $OUT/steps_decompose_k.json \
  > $OUT/steps_decompose_k.log 2>&1; echo "decompose-k rc $?"
grep -A5 "^AUTOTUNE mm(64x4096, 4096x4096)\|^AUTOTUNE mm(64x11008" $OUT/steps_decompose_k.log; grep "llama7b+compile:" $OUT/steps_decompose_k.log; date -u
FASTCHAT_SPEC_COMPILE_FREEZE=1 timeout 170 python3 -m fastchat_spec.bench.steps --shapes llama7b --compile 1 --out $OUT/steps_freeze.json \
  > $OUT/steps_freeze.log 2>&1; echo "freeze rc $?"; grep "llama7b+compile:" $OUT/steps_freeze.log; date -u
