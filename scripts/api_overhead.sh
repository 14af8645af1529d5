#!/usr/bin/env bash
# What FastChat's OpenAI API server adds to one request: the median latency of 1-token chat
# completions through the API next to the same generation asked of the model worker directly
# (/worker_generate), one request at a time, on FastChat's unchanged controller, worker and API server.
#
# Usage: bash scripts/api_overhead.sh [CKPT]   (default: the bundled model; DEVICE as in fastchat_servers.sh)
# Prints {"api_ms": [...], "worker_ms": [...]}: two rounds of 30 requests each, medians in milliseconds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CKPT=${1:-$ROOT/fastchat_spec/models/medusa-vicuna-nano}
LOGS=$(mktemp -d)
SERVER_LOGS=$LOGS/
# shellcheck source=scripts/fastchat_servers.sh
. "$ROOT/scripts/fastchat_servers.sh"
fastchat_env "$ROOT"
export LOGDIR=$LOGS  # FastChat writes its own log files there, not into the working directory
trap stop_servers EXIT
read -r CONTROLLER_PORT WORKER_PORT API_PORT < <(free_ports 3)
start_controller "$CONTROLLER_PORT"
start_api "$API_PORT"
start_worker spec "$CKPT" "$WORKER_PORT"
wait_for worker_spec "$(controller_lists spec)"
wait_for api "$(api_lists spec)"
"$PYTHON" - "$API" "http://127.0.0.1:$WORKER_PORT" <<'PY'
import json, statistics, sys, time

import requests

api, worker = sys.argv[1:3]
session = requests.Session()
session.trust_env = False  # 127.0.0.1 only, no proxy
question = "Tell me about dragons."


def timed(url, body):
    t0 = time.perf_counter()
    session.post(url, json=body, timeout=60).raise_for_status()
    return time.perf_counter() - t0


def through_api():
    return timed(api + "/v1/chat/completions", {"model": "spec", "max_tokens": 1, "temperature": 0,
                                                "messages": [{"role": "user", "content": question}]})


def to_worker():
    return timed(worker + "/worker_generate", {"model": "spec", "max_new_tokens": 1, "temperature": 0,
                                               "echo": False, "prompt": f"USER: {question} ASSISTANT:"})


for probe in (through_api, to_worker):  # warm up both paths
    for _ in range(3):
        probe()
result = {"api_ms": [], "worker_ms": []}
for _ in range(2):
    for key, probe in (("api_ms", through_api), ("worker_ms", to_worker)):
        result[key].append(round(1000 * statistics.median(probe() for _ in range(30)), 2))
print(json.dumps(result))
PY
