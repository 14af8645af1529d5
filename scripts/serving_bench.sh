#!/usr/bin/env bash
# Serving under concurrent load through FastChat's own servers: a speculative worker, then a
# stock worker on the same base, each answer checked, aggregate tok/s per concurrency level.
#
# Usage: bash scripts/serving_bench.sh CKPT BASE OUT_DIR
#
# Starts on 127.0.0.1, with free ports, the unchanged FastChat commands
#   python -m fastchat.serve.controller
#   python -m fastchat.serve.model_worker --model-path CKPT --model-names spec --limit-worker-concurrency 32
#   python -m fastchat.serve.openai_api_server
# checks that "spec" runs fastchat-spec's decoder, and runs python -m fastchat_spec.bench.load:
#   OUT_DIR/spec_levels.json       LEVELS concurrent clients, one level after another, REQUESTS each
#   OUT_DIR/spec_reliability.json  RELIABILITY_REQUESTS requests from RELIABILITY_CLIENTS clients
# Then it stops that worker with SIGTERM, starts
#   FASTCHAT_SPEC_DISABLE=1 python -m fastchat.serve.model_worker --model-path BASE --model-names stock ...
# (FastChat's own generate_stream), runs the same levels into OUT_DIR/stock_levels.json and writes
# OUT_DIR/summary.json: tok/s and latency per level, spec next to stock.
#
# Environment (defaults in brackets):
#   PYTHON [python3]  DEVICE [cuda if torch sees one, else cpu]  WORKER_ARGS [] extra flags for both workers
#   LEVELS [1,4,16,32]  REQUESTS [128]  RELIABILITY_REQUESTS [1000]  RELIABILITY_CLIENTS [16]
#   STOCK_LEVELS [LEVELS]  STOCK_REQUESTS [REQUESTS] for the stock worker (it is slow: fewer saves time)
#   LIMIT_WORKER_CONCURRENCY [32]  LOAD_ARGS [] extra flags for every bench.load run (e.g. "--max-tokens 64,256")
#   START_TIMEOUT [900] seconds a server may take to come up; RUN_TIMEOUT [5400] seconds one load run may take
# Logs: OUT_DIR/logs/ (servers, load runs; FastChat's own log files under OUT_DIR/logs/fastchat/).
# Every server is stopped at the end, also on an error or Ctrl-C.
# Exit status: 0 when every request of every run came back right; 1 when any failed, was empty,
# garbled or mismatched (the JSON files say which); 2 on a usage error; other: a server did not start.
set -euo pipefail

if [ $# -ne 3 ]; then
    sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
CKPT=$1 BASE=$2 OUT_DIR=$3
PYTHON=${PYTHON:-python3}
LEVELS=${LEVELS:-1,4,16,32}
REQUESTS=${REQUESTS:-128}
STOCK_LEVELS=${STOCK_LEVELS:-$LEVELS}
STOCK_REQUESTS=${STOCK_REQUESTS:-$REQUESTS}
RELIABILITY_REQUESTS=${RELIABILITY_REQUESTS:-1000}
RELIABILITY_CLIENTS=${RELIABILITY_CLIENTS:-16}
LIMIT_WORKER_CONCURRENCY=${LIMIT_WORKER_CONCURRENCY:-32}
START_TIMEOUT=${START_TIMEOUT:-900}
RUN_TIMEOUT=${RUN_TIMEOUT:-5400}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for path in "$CKPT" "$BASE"; do
    [ -e "$path" ] || { echo "serving_bench.sh: no checkpoint at $path" >&2; exit 2; }
done
LOGS=$OUT_DIR/logs
mkdir -p "$LOGS/fastchat"

# The checkout first on the path (it wins over an installed copy); servers stay offline and
# talk to 127.0.0.1 without a proxy.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
export LOGDIR=$LOGS/fastchat

if [ -z "${DEVICE:-}" ]; then
    DEVICE=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi

read -r CONTROLLER_PORT SPEC_PORT STOCK_PORT API_PORT < <("$PYTHON" - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)
CONTROLLER=http://127.0.0.1:$CONTROLLER_PORT
API=http://127.0.0.1:$API_PORT

declare -A PID_OF
PIDS=()
cleanup() {
    local pid
    if [ -n "${LOAD_PID:-}" ]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi  # timeout passes it on
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 100); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "serving_bench.sh: $*" >&2; }

# start NAME CMD...: run CMD in its own process group (so cleanup reaches its children too).
# Without job control, setsid execs in place: $! is the server's own pid (bench.load samples its RSS).
start() {
    local name=$1; shift
    log "$name: $*  (log: $LOGS/$name.log)"
    if command -v setsid >/dev/null; then
        setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
    else
        "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
    fi
    PIDS+=("$!")
    PID_OF[$name]=$!
}

# wait_for NAME PYTHON_EXPR: poll until the expression (s: a requests session) is true; fail with
# the log's tail, at once when the server's process has died.
wait_for() {
    local name=$1 expr=$2
    "$PYTHON" - "$name" "$expr" "$START_TIMEOUT" "${PID_OF[$name]}" <<'PY' || { tail -n 40 "$LOGS/$1.log" >&2; exit 3; }
import os, sys, time
import requests
name, expr, timeout, pid = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
s = requests.Session(); s.trust_env = False
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"serving_bench.sh: {name} exited before it was ready; its log:")
    try:
        if eval(expr, {"s": s}):
            sys.exit(0)
    except requests.RequestException:
        pass
    time.sleep(1)
sys.exit(f"serving_bench.sh: {name} not ready after {timeout:.0f}s ({expr}); its log:")
PY
}

# stop NAME: SIGTERM (a worker finishes its open requests first), SIGKILL after 120 s.
stop() {
    local name=$1 pid=${PID_OF[$1]}
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || { log "$name stopped"; return 0; }; sleep 0.2; done
    log "$name still running 120 s after SIGTERM: killed"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

# worker NAME MODEL_PATH [ENV=VALUE...]: a model worker serving MODEL_PATH as NAME.
worker() {
    local name=$1 path=$2 port; shift 2
    port=$([ "$name" = spec ] && echo "$SPEC_PORT" || echo "$STOCK_PORT")
    # shellcheck disable=SC2086  # WORKER_ARGS is a list of flags
    start "worker_$name" env "$@" "$PYTHON" -m fastchat.serve.model_worker --model-path "$path" \
        --model-names "$name" --device "$DEVICE" --host 127.0.0.1 --port "$port" \
        --worker-address "http://127.0.0.1:$port" --controller-address "$CONTROLLER" \
        --limit-worker-concurrency "$LIMIT_WORKER_CONCURRENCY" ${WORKER_ARGS:-}
    wait_for "worker_$name" "'$name' in s.post('$CONTROLLER/list_models', timeout=5).json()['models']"
    wait_for api "'$name' in {m['id'] for m in s.get('$API/v1/models', timeout=5).json()['data']}"
}

# check_decoder URL NAME yes|no: our generate_stream adds a "spec" field to the worker's chunks.
check_decoder() {
    "$PYTHON" - "$@" <<'PY'
import json, sys
import requests
url, model, ours = sys.argv[1], sys.argv[2], sys.argv[3] == "yes"
s = requests.Session(); s.trust_env = False
params = {"model": model, "prompt": "Hello", "temperature": 0, "max_new_tokens": 4}
with s.post(url + "/worker_generate_stream", json=params, stream=True, timeout=300) as r:
    r.raise_for_status()
    last = [json.loads(c) for c in r.iter_lines(delimiter=b"\0") if c][-1]
if ("spec" in last) != ours:
    sys.exit(f"serving_bench.sh: worker {model!r} runs " + ("FastChat's stock decoder: is fastchat-spec installed "
             "and CKPT a speculative checkpoint?" if ours else "our decoder: FASTCHAT_SPEC_DISABLE=1 was not honoured"))
print(f"serving_bench.sh: {model!r} runs " + ("fastchat-spec's generate_stream" if ours else "FastChat's own"),
      file=sys.stderr)
PY
}

FAILED=0
LOAD_PID=
# run_load NAME MODEL ARGS...: one bench.load run into OUT_DIR/NAME.json, its output in logs/NAME.log
# (tail -f it to follow). It runs in the background so that Ctrl-C or SIGTERM reach this script's trap
# at once. A run with problems (exit 1) or cut by RUN_TIMEOUT is recorded and the script goes on.
run_load() {
    local name=$1 model=$2 rc=0; shift 2
    log "load run $name (log: $LOGS/$name.log)"
    # shellcheck disable=SC2086  # LOAD_ARGS is a list of flags
    timeout --kill-after=30 "$RUN_TIMEOUT" "$PYTHON" -m fastchat_spec.bench.load --api-base "$API/v1" \
        --model "$model" --worker-pid "${PID_OF[worker_$model]}" --out "$OUT_DIR/$name.json" "$@" ${LOAD_ARGS:-} \
        >"$LOGS/$name.log" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    grep -E "clients:|level\(s\)|Error" "$LOGS/$name.log" >&2 || true
    if [ $rc -ne 0 ]; then
        log "load run $name ended with status $rc ($([ $rc = 124 ] && echo "cut after ${RUN_TIMEOUT}s" || echo "see its log"))"
        FAILED=1
    fi
}

start controller "$PYTHON" -m fastchat.serve.controller --host 127.0.0.1 --port "$CONTROLLER_PORT"
wait_for controller "s.get('$CONTROLLER/test_connection', timeout=2).ok"
start api "$PYTHON" -m fastchat.serve.openai_api_server --host 127.0.0.1 --port "$API_PORT" \
    --controller-address "$CONTROLLER"
wait_for api "s.get('$API/v1/models', timeout=5).ok"

worker spec "$CKPT"
check_decoder "http://127.0.0.1:$SPEC_PORT" spec yes
run_load spec_levels spec --concurrency "$LEVELS" --num-requests "$REQUESTS"
run_load spec_reliability spec --concurrency "$RELIABILITY_CLIENTS" --num-requests "$RELIABILITY_REQUESTS"
stop worker_spec

worker stock "$BASE" FASTCHAT_SPEC_DISABLE=1
check_decoder "http://127.0.0.1:$STOCK_PORT" stock no
run_load stock_levels stock --concurrency "$STOCK_LEVELS" --num-requests "$STOCK_REQUESTS"
stop worker_stock

"$PYTHON" - "$OUT_DIR" <<'PY' || FAILED=1
import json, os, sys
from fastchat_spec.bench.load import side_by_side
out = sys.argv[1]
runs = {}
for name in ("spec_levels", "stock_levels", "spec_reliability"):
    try:
        with open(os.path.join(out, name + ".json"), encoding="utf-8") as f:
            runs[name] = json.load(f)
    except (OSError, ValueError) as e:
        print(f"serving_bench.sh: no usable {name}.json ({e}); summary without it", file=sys.stderr)
summary = {"levels": side_by_side(runs["spec_levels"], runs["stock_levels"])
           if {"spec_levels", "stock_levels"} <= runs.keys() else None}
if "spec_reliability" in runs:
    summary["reliability"] = {k: v for k, v in runs["spec_reliability"]["levels"][0].items() if k != "requests_detail"}
with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
for row in summary["levels"] or []:
    spec, stock = row["spec"], row["stock"]
    print(f"{row['concurrency']:>3} clients: spec {spec['tok_s']:8.1f} tok/s (p50 {spec['latency_s']['p50']}s), "
          f"stock {stock['tok_s']:8.1f} tok/s (p50 {stock['latency_s']['p50']}s), spec/stock {row['tok_s_ratio']}x")
if "reliability" in summary:
    r = summary["reliability"]
    print(f"reliability: {r['ok']}/{r['requests']} ok, {r['failed']} failed, {r['empty']} empty, "
          f"{r['garbled']} garbled, {r['mismatched']} mismatched at {r['concurrency']} clients")
print(f"serving_bench.sh: written {os.path.join(out, 'summary.json')}")
PY
exit $FAILED
