# Call 2 (same warm machine): in-process levels, then FastChat's servers on the small reference.
source scripts/device_setup.sh >/dev/null
[ -f runs/small/vicuna-small/config.json ] || { echo "base missing: machine was released"; exit 9; }
[ -f runs/small/medusa1-vicuna-small/config.json ] || STAGES=heads bash scripts/small_serving.sh runs/small_data runs/small /tmp/r/small
mkdir -p /tmp/r/small
echo "== in-process $(date +%T)"
python3 -m fastchat_spec.bench --model-path runs/small/medusa1-vicuna-small --prompts .gpu/prompts.jsonl --num-prompts 32 \
  --max-new-tokens 256 --baselines ar --concurrency 1,16 --profile-prompts 0 --out /tmp/r/small/small_inprocess.json > /tmp/r/small/inprocess.log 2>&1; echo "rc $?"
tail -5 /tmp/r/small/inprocess.log
echo "== serving $(date +%T)"
LEVELS=1,16 REQUESTS=128 STOCK_LEVELS=16 STOCK_REQUESTS=16 RELIABILITY_REQUESTS=1000 RUN_TIMEOUT=200 \
  LOAD_ARGS='--prompts .gpu/prompts.jsonl --max-tokens 256' STAGES=serving \
  bash scripts/small_serving.sh runs/small_data runs/small /tmp/r/small/serving > /tmp/r/small/serving.log 2>&1; echo "rc $?"
tail -20 /tmp/r/small/serving.log
cp runs/small/*.log /tmp/r/small/
cp runs/small/vicuna-small/*.json /tmp/r/small/ 2>/dev/null; mkdir -p /tmp/r/small/base_cfg && mv /tmp/r/small/config.json /tmp/r/small/base_cfg/ 2>/dev/null
tar czf $OUT/small.tgz -C /tmp/r small; echo "== done $(date +%T)"
