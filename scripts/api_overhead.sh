#!/usr/bin/env bash
# What FastChat's OpenAI API server adds to one request: the median latency of 1-token chat
# completions through the API next to the same generation asked of the model worker directly
# (/worker_generate), one request at a time, on FastChat's unchanged controller, worker and API server.
#
# Usage: bash scripts/api_overhead.sh [CKPT]   (default: the bundled model; DEVICE as in fastchat_servers.sh)
# Prints {"api_ms": [...], "worker_ms": [...]}: two rounds of 30 requests each, medians in milliseconds.
# TOKENS=N (default 1) asks for N-token answers, 10 per round, and adds the streamed paths
# (api_stream_ms: SSE from the API; worker_stream_ms: the worker's own /worker_generate_stream).
# httpx_client_ms: building one httpx.AsyncClient (FastChat's API server built one per streamed request).
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
"$PYTHON" - "$API" "http://127.0.0.1:$WORKER_PORT" "${TOKENS:-1}" <<'PY'
import json, statistics, sys, time

import requests

api, worker, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
session = requests.Session()
session.trust_env = False  # 127.0.0.1 only, no proxy
question = "Tell me about dragons."
chat = {"model": "spec", "max_tokens": tokens, "temperature": 0, "messages": [{"role": "user", "content": question}]}


def api_prompt():
    """The prompt and stops the API server builds for the chat request (the worker's own template)."""
    from fastchat.conversation import Conversation, SeparatorStyle

    c = session.post(worker + "/worker_get_conv_template", timeout=60).json()["conv"]
    conv = Conversation(name=c["name"], system_template=c["system_template"], system_message=c["system_message"],
                        roles=c["roles"], messages=list(c["messages"]), offset=c["offset"],
                        sep_style=SeparatorStyle(c["sep_style"]), sep=c["sep"], sep2=c["sep2"],
                        stop_str=c["stop_str"], stop_token_ids=c["stop_token_ids"])
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return {"prompt": conv.get_prompt(), "stop": conv.stop_str, "stop_token_ids": conv.stop_token_ids}


generate = {"model": "spec", "max_new_tokens": tokens, "temperature": 0, "echo": False, **api_prompt()}


def timed(url, body, stream=False):
    """Seconds until the whole answer is in, and its completion tokens."""
    t0 = time.perf_counter()
    with session.post(url, json=body, timeout=60, stream=stream) as response:
        response.raise_for_status()
        if not stream:
            usage = response.json()["usage"]
        else:  # SSE lines ("data: {...}") from the API, NUL-separated JSON from the worker
            last = [piece for piece in response.iter_lines(delimiter=b"\0" if "worker" in url else None) if piece]
            usage = None
            for piece in reversed(last):
                data = piece.decode().removeprefix("data: ")
                if data.startswith("{") and json.loads(data).get("usage"):
                    usage = json.loads(data)["usage"]
                    break
    return time.perf_counter() - t0, (usage or {}).get("completion_tokens")


probes = {
    "api_ms": lambda: timed(api + "/v1/chat/completions", chat),
    "worker_ms": lambda: timed(worker + "/worker_generate", generate),
}
if tokens > 1:  # streamed answers: one HTTP chunk per engine step through both servers
    probes["api_stream_ms"] = lambda: timed(api + "/v1/chat/completions", {**chat, "stream": True}, stream=True)
    probes["worker_stream_ms"] = lambda: timed(worker + "/worker_generate_stream", generate, stream=True)
for probe in probes.values():  # warm up every path
    for _ in range(3):
        probe()
result = {key: [] for key in probes}
counts = {}
for _ in range(2):
    for key, probe in probes.items():
        runs = [probe() for _ in range(30 if tokens == 1 else 10)]
        result[key].append(round(1000 * statistics.median(r[0] for r in runs), 2))
        counts[key] = runs[0][1]  # None: the API's stream chunks carry no usage


def client_ms():
    """What building one httpx.AsyncClient costs (FastChat's API server built one per streamed request)."""
    import httpx

    t0 = time.perf_counter()
    for _ in range(20):
        httpx.AsyncClient()
    return round(1000 * (time.perf_counter() - t0) / 20, 2)


print(json.dumps({**result, "completion_tokens": counts, "httpx_client_ms": client_ms()}))
PY
