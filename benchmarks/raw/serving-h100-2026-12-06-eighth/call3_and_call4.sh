source scripts/device_setup.sh >/dev/null
export LEVELS=1,16 REQUESTS=128 STOCK_LEVELS=none RUN_TIMEOUT=120 RELIABILITY_REQUESTS=0
export LOAD_ARGS='--prompts .gpu/prompts.jsonl --max-tokens 256'
run() { echo "== $1 $(date +%T)"; SERVER_CODE=$2 bash scripts/serving_bench.sh fastchat_spec/models/medusa-vicuna-nano fastchat_spec/models/vicuna-nano /tmp/r/$1/nano > $OUT/$1.log 2>&1; echo "rc $?"; python3 -c "
import json
d=json.load(open('/tmp/r/$1/nano/spec_levels.json'))
for l in d['levels']: print(l['concurrency'], l['ok'], l['failed'], l['mismatched'], l['tok_s'], l['latency_s']['p50'], l.get('ttft_s',{}).get('p50'))"; tar czf $OUT/$1.tgz -C /tmp/r $1; }
run f-head ""
run g-2de2458 .gpu/code_2de2458
echo "== stock small $(date +%T)"
[ -f runs/small/vicuna-small/config.json ] && LEVELS=16 REQUESTS=16 STOCK_LEVELS=16 STOCK_REQUESTS=16 RUN_TIMEOUT=240 \
  LOAD_ARGS='--prompts .gpu/prompts.jsonl --max-tokens 128' timeout 330 bash scripts/serving_bench.sh runs/small/medusa1-vicuna-small runs/small/vicuna-small /tmp/r/h-small-stock > $OUT/h.log 2>&1; echo "rc $?"
tail -6 $OUT/h.log; tar czf $OUT/h-small-stock.tgz -C /tmp/r h-small-stock; echo "== end $(date +%T)"

# Call 4 ran the lines above up to and including run()'s definition, then only:
#   run f2-head ""
#   run g2-2de2458 .gpu/code_2de2458
