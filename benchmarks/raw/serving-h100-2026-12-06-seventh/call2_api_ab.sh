# d = working tree (deferred first token + shared API session), with 1,000-request reliability; e = deferred only.
source scripts/device_setup.sh >/dev/null
export LEVELS=1,16 REQUESTS=128 STOCK_LEVELS=none RUN_TIMEOUT=150 RELIABILITY_REQUESTS=0
export LOAD_ARGS='--prompts .gpu/prompts.jsonl --max-tokens 256'
cp fastchat_spec/api_dispatch.py /tmp/api_new.py
run() { echo "== $1 $(date +%T)"; bash scripts/serving_bench.sh fastchat_spec/models/medusa-vicuna-nano fastchat_spec/models/vicuna-nano /tmp/r/$1/nano > $OUT/$1.log 2>&1; echo "rc $?"; python3 -c "
import json,sys
for f in ('levels','reliability'):
  try: d=json.load(open('/tmp/r/$1/nano/spec_'+f+'.json'))
  except Exception: continue
  for l in d['levels']: print(f, l['concurrency'], l['ok'], l['failed'], l['mismatched'], l['tok_s'], l['latency_s']['p50'], l.get('ttft_s',{}).get('p50'), l.get('engine'))"; }
RELIABILITY_REQUESTS=1000 run d-both
cp .gpu/v_api_head/api_dispatch.py fastchat_spec/api_dispatch.py; run e-deferred
cp /tmp/api_new.py fastchat_spec/api_dispatch.py
[ $SECONDS -lt 400 ] && run d2-both
tar czf $OUT/raw.tgz -C /tmp/r .
