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
#                                  (with the engine loop's rows/step, ms/step and busy share per level)
#   OUT_DIR/spec_reliability.json  RELIABILITY_REQUESTS requests from RELIABILITY_CLIENTS clients
# Then it stops that worker with SIGTERM, starts
#   FASTCHAT_SPEC_DISABLE=1 python -m fastchat.serve.model_worker --model-path BASE --model-names stock ...
# (FastChat's own generate_stream), runs the same levels into OUT_DIR/stock_levels.json and writes
# OUT_DIR/summary.json: tok/s and latency per level, spec next to stock.
#
# Environment (defaults in brackets):
#   PYTHON [python3]  DEVICE [cuda if torch sees one, else cpu]  WORKER_ARGS [] extra flags for both workers
#   LEVELS [1,4,16,32]  REQUESTS [128]  RELIABILITY_REQUESTS [1000]  RELIABILITY_CLIENTS [16]
#   STOCK_LEVELS [LEVELS]  STOCK_REQUESTS [REQUESTS] for the stock worker (it is slow: fewer saves time);
#     STOCK_LEVELS=none skips the stock worker, RELIABILITY_REQUESTS=0 the reliability run
#   LIMIT_WORKER_CONCURRENCY [32]  LOAD_ARGS [] extra flags for every bench.load run (e.g. "--max-tokens 64,256")
#   START_TIMEOUT [900] seconds a server may take to come up; RUN_TIMEOUT [5400] seconds one load run may take
#   SERVER_CODE [] the servers run another revision's code, exported by scripts/export_code.sh (an A/B of
#     two revisions in one GPU call; the load client and its checks stay the checkout's)
#   PROFILE_WORKER [] set to 1: py-spy (if installed) samples the spec worker and the API server while they
#     hold the GIL during the levels run: OUT_DIR/{worker_spec,api}_gil.txt (collapsed stacks) and
#     OUT_DIR/{worker_spec,api}_gil_top.txt (per thread and per function)
# Logs: OUT_DIR/logs/ (servers, load runs; FastChat's own log files under OUT_DIR/logs/fastchat/).
# Every server is stopped at the end, also on an error or Ctrl-C.
# Exit status: 0 when every request of every run came back right; 1 when any failed, was empty,
# garbled or mismatched (the JSON files say which); 2 on a usage error; 3: a server did not start.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/fastchat_servers.sh
. "$ROOT/scripts/fastchat_servers.sh"

bench_args "$@"
CKPT=$1 BASE=$2 OUT_DIR=$3
LEVELS=${LEVELS:-1,4,16,32}
REQUESTS=${REQUESTS:-128}
STOCK_LEVELS=${STOCK_LEVELS:-$LEVELS}
STOCK_REQUESTS=${STOCK_REQUESTS:-$REQUESTS}
RELIABILITY_REQUESTS=${RELIABILITY_REQUESTS:-1000}
RELIABILITY_CLIENTS=${RELIABILITY_CLIENTS:-16}
RUN_TIMEOUT=${RUN_TIMEOUT:-5400}
LOGS=$OUT_DIR/logs
mkdir -p "$LOGS/fastchat"
SERVER_LOGS=$LOGS/
fastchat_env "$ROOT"
export LOGDIR=$LOGS/fastchat
read -r CONTROLLER_PORT SPEC_PORT STOCK_PORT API_PORT < <(free_ports 4)
declare -A WORKER_URL=([spec]="http://127.0.0.1:$SPEC_PORT" [stock]="http://127.0.0.1:$STOCK_PORT")

cleanup() {
    if [ -n "${LOAD_PID:-}" ]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi  # timeout passes it on
    stop_servers
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# worker NAME MODEL_PATH PORT [ENV=VALUE...]: a model worker serving MODEL_PATH as NAME, once the
# controller and the API server list it.
worker() {
    start_worker "$@"
    wait_for "worker_$1" "$(controller_lists "$1")"
    wait_for api "$(api_lists "$1")"
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
        --model "$model" --worker-pid "${SERVER_PID[worker_$model]}" --worker-url "${WORKER_URL[$model]}" \
        --out "$OUT_DIR/$name.json" "$@" \
        ${LOAD_ARGS:-} >"$LOGS/$name.log" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    grep -E "clients:|level\(s\)|Error" "$LOGS/$name.log" >&2 || true
    if [ $rc -ne 0 ]; then
        log "load run $name ended with status $rc ($([ $rc = 124 ] && echo "cut after ${RUN_TIMEOUT}s" || echo "see its log"))"
        FAILED=1
    fi
}

start_controller "$CONTROLLER_PORT"
start_api "$API_PORT"

worker spec "$CKPT" "$SPEC_PORT"
check_decoder "http://127.0.0.1:$SPEC_PORT" spec yes
SPY_PIDS=()
if [ -n "${PROFILE_WORKER:-}" ] && command -v py-spy >/dev/null; then
    for server in worker_spec api; do
        py-spy record --nonblocking --gil --threads --format raw --rate 200 --pid "${SERVER_PID[$server]}" \
            --output "$OUT_DIR/${server}_gil.txt" >"$LOGS/py-spy_$server.log" 2>&1 &
        SPY_PIDS+=($!)
    done
fi
run_load spec_levels spec --concurrency "$LEVELS" --num-requests "$REQUESTS"
if [ ${#SPY_PIDS[@]} -gt 0 ]; then
    kill -INT "${SPY_PIDS[@]}" 2>/dev/null || true
    wait "${SPY_PIDS[@]}" || true
    for server in worker_spec api; do
        "$PYTHON" "$ROOT/scripts/pyspy_top.py" "$OUT_DIR/${server}_gil.txt" >"$OUT_DIR/${server}_gil_top.txt" || true
    done
fi
if [ "$RELIABILITY_REQUESTS" != 0 ]; then
    run_load spec_reliability spec --concurrency "$RELIABILITY_CLIENTS" --num-requests "$RELIABILITY_REQUESTS"
fi
stop_server worker_spec

if [ "$STOCK_LEVELS" != none ]; then
    worker stock "$BASE" "$STOCK_PORT" FASTCHAT_SPEC_DISABLE=1
    check_decoder "http://127.0.0.1:$STOCK_PORT" stock no
    run_load stock_levels stock --concurrency "$STOCK_LEVELS" --num-requests "$STOCK_REQUESTS"
    stop_server worker_stock
fi

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
summary = {"levels": side_by_side(runs["spec_levels"], runs.get("stock_levels"))
           if "spec_levels" in runs else None}
if "spec_reliability" in runs:
    summary["reliability"] = {k: v for k, v in runs["spec_reliability"]["levels"][0].items() if k != "requests_detail"}
with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
for row in summary["levels"] or []:
    spec, stock = row["spec"], row.get("stock")
    print(f"{row['concurrency']:>3} clients: spec {spec['tok_s']:8.1f} tok/s (p50 {spec['latency_s']['p50']}s)"
          + (f", stock {stock['tok_s']:8.1f} tok/s (p50 {stock['latency_s']['p50']}s), spec/stock "
             f"{row['tok_s_ratio']}x" if stock else ""))
if "reliability" in summary:
    r = summary["reliability"]
    print(f"reliability: {r['ok']}/{r['requests']} ok, {r['failed']} failed, {r['empty']} empty, "
          f"{r['garbled']} garbled, {r['mismatched']} mismatched at {r['concurrency']} clients")
print(f"serving_bench.sh: written {os.path.join(out, 'summary.json')}")
PY
exit $FAILED
