# Call 3, the next on the same warm H100 (02:38 UTC): fastchat_spec/bench/attention.py as at 1bc9663 (576 keys, no --capacity; later extended).
# Carry: .gpu/whl_train .gpu/attn.sh (installed by call 1)
source scripts/device_setup.sh >/dev/null; date -u
timeout 100 python3 -m fastchat_spec.bench.attention --out $OUT/attention.json > $OUT/attention.log 2>&1; echo "rc $?"; cat $OUT/attention.log | grep -v -i warn | tail -20
