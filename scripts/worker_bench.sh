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
# Every server is stopped at the end, also on an error or Ctrl-C.
# Exit status: 0 when bench.api wrote OUT_JSON; 1 when it failed or a worker runs the wrong decoder;
# 2 on a usage error; 3 when a server did not start.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/fastchat_servers.sh
. "$ROOT/scripts/fastchat_servers.sh"

bench_args "$@"
CKPT=$1 BASE=$2 OUT_JSON=$3
mkdir -p "$(dirname "$OUT_JSON")"
SERVER_LOGS=${OUT_JSON%.json}.
fastchat_env "$ROOT"
# FastChat's own log files go to a scratch folder (they repeat what the .log files next to OUT_JSON get).
LOGDIR=$(mktemp -d)
export LOGDIR
read -r CONTROLLER_PORT SPEC_PORT STOCK_PORT API_PORT < <(free_ports 4)

trap 'stop_servers; rm -rf "$LOGDIR"' EXIT
trap 'exit 130' INT TERM

start_controller "$CONTROLLER_PORT"
start_worker spec "$CKPT" "$SPEC_PORT"
start_worker stock "$BASE" "$STOCK_PORT" FASTCHAT_SPEC_DISABLE=1
wait_for worker_spec "$(controller_lists spec)"  # the two load at once
wait_for worker_stock "$(controller_lists stock)"
start_api "$API_PORT"
wait_for api "$(api_lists spec) and $(api_lists stock)"
check_decoder "http://127.0.0.1:$SPEC_PORT" spec yes
check_decoder "http://127.0.0.1:$STOCK_PORT" stock no

# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
"$PYTHON" -m fastchat_spec.bench.api --api-base "$API/v1" --models spec,stock --out "$OUT_JSON" \
    ${CONCURRENCY:+--concurrency "$CONCURRENCY"} ${BENCH_ARGS:-}
