#!/usr/bin/env bash
# Decoding speed through FastChat's own serving stack, as an OpenAI-API user sees it.
#
# Usage: bash scripts/worker_bench.sh CKPT BASE OUT_JSON
#
# Starts on 127.0.0.1, with free ports, the unchanged FastChat commands:
#   python -m fastchat.serve.controller
#   python -m fastchat.serve.model_worker --model-path CKPT --model-names spec     (our speculative path)
#   FASTCHAT_SPEC_DISABLE=1 python -m fastchat.serve.model_worker --model-path BASE --model-names stock
#                                                                                   (FastChat's generate_stream)
#   python -m fastchat.serve.openai_api_server
# checks over the workers' own API that "spec" runs our decoder and "stock" FastChat's,
# then runs `python -m fastchat_spec.bench.api --models spec,stock` and stops every server.
#
# Environment:
#   PYTHON       interpreter (default python3)
#   DEVICE       worker device (default: cuda when torch sees a GPU, else cpu)
#   WORKER_ARGS  extra flags for both workers (e.g. "--dtype float16")
#   BENCH_ARGS   extra flags for fastchat_spec.bench.api (e.g. "--num-prompts 2 --max-new-tokens 64")
#   CONCURRENCY  also measure under that many concurrent clients per level, spec and stock side by side
#                (e.g. 1,4,16,32: bench.api --concurrency; default: one request at a time only)
#   LIMIT_WORKER_CONCURRENCY  both workers' --limit-worker-concurrency (default 32)
#   START_TIMEOUT seconds a server may take to come up (default 900)
# Server logs: OUT_JSON's name with .controller.log, .worker_spec.log, .worker_stock.log, .api.log.
set -euo pipefail

if [ $# -ne 3 ]; then
    sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
CKPT=$1 BASE=$2 OUT_JSON=$3
PYTHON=${PYTHON:-python3}
START_TIMEOUT=${START_TIMEOUT:-900}
LIMIT_WORKER_CONCURRENCY=${LIMIT_WORKER_CONCURRENCY:-32}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for path in "$CKPT" "$BASE"; do
    [ -e "$path" ] || { echo "worker_bench.sh: no checkpoint at $path" >&2; exit 2; }
done
mkdir -p "$(dirname "$OUT_JSON")"
STEM=${OUT_JSON%.json}

# The checkout first on the path (it wins over an installed copy); servers stay offline and
# talk to 127.0.0.1 without a proxy; FastChat's own log files go to a scratch folder
# (they repeat what the .log files next to OUT_JSON get).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
LOGDIR=$(mktemp -d)
export LOGDIR

if [ -z "${DEVICE:-}" ]; then
    DEVICE=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi

read -r CONTROLLER_PORT SPEC_PORT STOCK_PORT API_PORT < <("$PYTHON" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
CONTROLLER=http://127.0.0.1:$CONTROLLER_PORT
API=http://127.0.0.1:$API_PORT

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$LOGDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run CMD in its own process group (so cleanup reaches its children too).
start() {
    local name=$1; shift
    echo "worker_bench.sh: $name: $*  (log: $STEM.$name.log)" >&2
    if command -v setsid >/dev/null; then
        setsid "$@" >"$STEM.$name.log" 2>&1 </dev/null &
    else
        "$@" >"$STEM.$name.log" 2>&1 </dev/null &
    fi
    PIDS+=("$!")
    PID_OF[$name]=$!
}

# wait_for NAME PYTHON_EXPR: poll until the expression (requests as r) is true; fail with the log,
# at once when the server's process has died.
declare -A PID_OF
wait_for() {
    local name=$1 expr=$2
    "$PYTHON" - "$name" "$expr" "$START_TIMEOUT" "${PID_OF[$name]}" <<'EOF' || { echo "--- $STEM.$1.log ---" >&2; tail -n 40 "$STEM.$1.log" >&2; exit 1; }
import sys, time
import requests as r
import os
name, expr, timeout, pid = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
s = r.Session(); s.trust_env = False
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"worker_bench.sh: {name} exited before it was ready")
    try:
        if eval(expr, {"s": s}):
            sys.exit(0)
    except r.RequestException:
        pass
    time.sleep(1)
sys.exit(f"worker_bench.sh: {name} not ready after {timeout:.0f}s ({expr})")
EOF
}

listed() { echo "'$1' in s.post('$CONTROLLER/list_models', timeout=5).json()['models']"; }

start controller "$PYTHON" -m fastchat.serve.controller --host 127.0.0.1 --port "$CONTROLLER_PORT"
wait_for controller "s.get('$CONTROLLER/test_connection', timeout=2).ok"

# shellcheck disable=SC2086  # WORKER_ARGS is a list of flags
start worker_spec "$PYTHON" -m fastchat.serve.model_worker --model-path "$CKPT" --model-names spec \
    --device "$DEVICE" --host 127.0.0.1 --port "$SPEC_PORT" --worker-address "http://127.0.0.1:$SPEC_PORT" \
    --controller-address "$CONTROLLER" --limit-worker-concurrency "$LIMIT_WORKER_CONCURRENCY" ${WORKER_ARGS:-}
# shellcheck disable=SC2086
start worker_stock env FASTCHAT_SPEC_DISABLE=1 "$PYTHON" -m fastchat.serve.model_worker --model-path "$BASE" \
    --model-names stock --device "$DEVICE" --host 127.0.0.1 --port "$STOCK_PORT" \
    --worker-address "http://127.0.0.1:$STOCK_PORT" --controller-address "$CONTROLLER" \
    --limit-worker-concurrency "$LIMIT_WORKER_CONCURRENCY" ${WORKER_ARGS:-}
wait_for worker_spec "$(listed spec)"
wait_for worker_stock "$(listed stock)"

start api "$PYTHON" -m fastchat.serve.openai_api_server --host 127.0.0.1 --port "$API_PORT" \
    --controller-address "$CONTROLLER"
wait_for api "{'spec', 'stock'} <= {m['id'] for m in s.get('$API/v1/models', timeout=5).json()['data']}"

# Our generate_stream adds a "spec" field to the worker's chunks; FastChat's does not.
"$PYTHON" - "http://127.0.0.1:$SPEC_PORT" "http://127.0.0.1:$STOCK_PORT" <<'EOF'
import json, sys
import requests
s = requests.Session(); s.trust_env = False
def last_chunk(url, model):
    params = {"model": model, "prompt": "Hello", "temperature": 0, "max_new_tokens": 4}
    with s.post(url + "/worker_generate_stream", json=params, stream=True, timeout=300) as r:
        r.raise_for_status()
        return [json.loads(c) for c in r.iter_lines(delimiter=b"\0") if c][-1]
spec, stock = last_chunk(sys.argv[1], "spec"), last_chunk(sys.argv[2], "stock")
if "spec" not in spec:
    sys.exit("worker_bench.sh: the 'spec' worker runs FastChat's stock decoder: is fastchat-spec installed "
             "(pip install .) and CKPT a speculative checkpoint?")
if "spec" in stock:
    sys.exit("worker_bench.sh: the 'stock' worker runs our decoder: FASTCHAT_SPEC_DISABLE=1 was not honoured")
print("worker_bench.sh: 'spec' runs fastchat-spec's generate_stream, 'stock' FastChat's", file=sys.stderr)
EOF

# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
"$PYTHON" -m fastchat_spec.bench.api --api-base "$API/v1" --models spec,stock --out "$OUT_JSON" \
    ${CONCURRENCY:+--concurrency "$CONCURRENCY"} ${BENCH_ARGS:-}
