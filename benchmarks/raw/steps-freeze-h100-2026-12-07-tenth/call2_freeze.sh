# Call 2, the next on the same warm H100 (carry .gpu/whl_train, installed by call 1): the committed
# FASTCHAT_SPEC_COMPILE_FREEZE=1 path in the default compile mode, at 5bf51d7.
source scripts/device_setup.sh >/dev/null; date -u; FASTCHAT_SPEC_COMPILE_FREEZE=1 timeout 190 python3 -m fastchat_spec.bench.steps --shapes llama7b --compile 1 --profile --out $OUT/steps_freeze.json > $OUT/steps_freeze.log 2>&1; echo "freeze rc $?"; grep -v -i warn $OUT/steps_freeze.log | grep -A4 "llama7b+compile:"; date -u
