# nano 1 and 16 clients: b = 2a905ce's stream.py (no first-chunk pacing), a = HEAD c63bf6b, c = deferred first token.
source scripts/device_setup.sh >/dev/null
export LEVELS=1,16 REQUESTS=128 STOCK_LEVELS=none RUN_TIMEOUT=120 RELIABILITY_REQUESTS=0
export LOAD_ARGS='--prompts .gpu/prompts.jsonl --max-tokens 256'
G=fastchat_spec/generate
use() { cp .gpu/$1/*.py $G/; }
run() { echo "== $1 $(date +%T)"; bash scripts/serving_bench.sh fastchat_spec/models/medusa-vicuna-nano fastchat_spec/models/vicuna-nano /tmp/r/$1/nano > $OUT/$1.log 2>&1; echo "rc $?"; python3 -c "
import json,sys; d=json.load(open('/tmp/r/$1/nano/spec_levels.json'))
for l in d['levels']: print(l['concurrency'], l['ok'], l['tok_s'], l['latency_s']['p50'], l.get('ttft_s',{}).get('p50'), l.get('engine'))"; }
use v_head; cp .gpu/stream_2a905ce.py $G/stream.py; run b-oldstream
use v_head; run a-head
use v_new; run c-deferred
[ $SECONDS -lt 420 ] && { use v_head; run a2-head; }
[ $SECONDS -lt 480 ] && { use v_new; run c2-deferred; }
tar czf $OUT/raw.tgz -C /tmp/r .
