# Call 2, the next on the same warm H100 (02:36 UTC): bench.steps --profile now profiles the tree graph too.
# The same warm H100 as steps_gemms_dk.sh (installed there): the committed freezing path, with the tree graph profiled.
source scripts/device_setup.sh >/dev/null; date -u
FASTCHAT_SPEC_COMPILE_FREEZE=1 timeout 200 python3 -m fastchat_spec.bench.steps --shapes llama7b --compile 1 --profile --out $OUT/steps_freeze_profile.json \
  > $OUT/steps_freeze_profile.log 2>&1; echo "rc $?"; grep -v -i warn $OUT/steps_freeze_profile.log | grep -A30 "llama7b+compile:"; date -u
