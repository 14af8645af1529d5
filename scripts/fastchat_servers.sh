# shellcheck shell=bash
# FastChat's unchanged servers for the bench scripts (sourced by scripts/serving_bench.sh and
# scripts/worker_bench.sh; not run on its own): each server runs on 127.0.0.1 with a free port,
# in its own process group (so stopping it reaches its children too), with its output in
# ${SERVER_LOGS}NAME.log; stop_servers, from the script's EXIT trap, stops every one.
#
# The sourcing script sets SERVER_LOGS, the log files' path prefix (a folder with a trailing /, or a
# file stem with a trailing .), and may set, as its users do (defaults in brackets):
#   PYTHON [python3]  DEVICE [cuda if torch sees one, else cpu]  WORKER_ARGS [] extra flags for every worker
#   LIMIT_WORKER_CONCURRENCY [32]  START_TIMEOUT [900] seconds a server may take to come up
#   SERVER_CODE [] a folder with another revision's fastchat_spec/ and fastchat_spec_hook.py
#     (scripts/export_code.sh writes one): first on every server's path, so the servers run that code
#     while the script's own clients (bench.load, checks) keep the checkout's
# start_controller and start_api set CONTROLLER and API, their URLs. A server that does not come up
# ends the script with status 3, after the tail of its log.

PYTHON=${PYTHON:-python3}
LIMIT_WORKER_CONCURRENCY=${LIMIT_WORKER_CONCURRENCY:-32}
START_TIMEOUT=${START_TIMEOUT:-900}
SERVER_PIDS=()
declare -gA SERVER_PID

log() { echo "${0##*/}: $*" >&2; }

# usage: the script's opening comment, without the "# ", on stderr.
usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" >&2
}

# bench_args CKPT BASE OUT: a bench script's three arguments; the usage and exit 2 unless there are
# three, an error and exit 2 when CKPT or BASE does not exist.
bench_args() {
    if [ $# -ne 3 ]; then
        usage
        exit 2
    fi
    local path
    for path in "$1" "$2"; do
        [ -e "$path" ] || { log "no checkpoint at $path"; exit 2; }
    done
}

# fastchat_env ROOT: the checkout ROOT first on the path (it wins over an installed copy); servers
# stay offline and talk to 127.0.0.1 without a proxy.
fastchat_env() {
    export PYTHONPATH="$1${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
    if [ -z "${DEVICE:-}" ]; then
        DEVICE=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
    fi
}

# free_ports N: N distinct TCP ports on 127.0.0.1 that nothing listens on, on one line.
free_ports() {
    "$PYTHON" - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))  # all bound at once: no port is handed out twice
print(*[s.getsockname()[1] for s in socks])
PY
}

# start_server NAME CMD...: run CMD in its own process group, output in ${SERVER_LOGS}NAME.log.
# Without job control, setsid execs in place: $! is the server's own pid (bench.load samples its RSS).
start_server() {
    local name=$1; shift
    if [ -n "${SERVER_CODE:-}" ]; then
        [ -d "$SERVER_CODE/fastchat_spec" ] || { log "SERVER_CODE=$SERVER_CODE holds no fastchat_spec/"; exit 2; }
        # PYTHONSAFEPATH: `python -m` would otherwise put the working directory (the checkout) first.
        set -- env PYTHONSAFEPATH=1 PYTHONPATH="$(cd "$SERVER_CODE" && pwd)${PYTHONPATH:+:$PYTHONPATH}" "$@"
    fi
    log "$name: $*  (log: ${SERVER_LOGS}$name.log)"
    if command -v setsid >/dev/null; then
        setsid "$@" >"${SERVER_LOGS}$name.log" 2>&1 </dev/null &
    else
        "$@" >"${SERVER_LOGS}$name.log" 2>&1 </dev/null &
    fi
    SERVER_PIDS+=("$!")
    SERVER_PID[$name]=$!
}

# wait_for NAME PYTHON_EXPR: poll until the expression (s: a requests session) is true; end the script
# with the log's tail when it is not within START_TIMEOUT, at once when the server's process has died.
wait_for() {
    local name=$1 expr=$2
    "$PYTHON" - "${0##*/}" "$name" "$expr" "$START_TIMEOUT" "${SERVER_PID[$name]}" <<'PY' \
        || { echo "--- ${SERVER_LOGS}$name.log ---" >&2; tail -n 40 "${SERVER_LOGS}$name.log" >&2; exit 3; }
import os, sys, time
import requests
script, name, expr, timeout, pid = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
s = requests.Session(); s.trust_env = False
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"{script}: {name} exited before it was ready")
    try:
        if eval(expr, {"s": s}):
            sys.exit(0)
    except requests.RequestException:
        pass
    time.sleep(1)
sys.exit(f"{script}: {name} not ready after {timeout:.0f}s ({expr})")
PY
}

# Readiness checks for wait_for: whether the controller / the API server lists model NAME.
controller_lists() { echo "'$1' in s.post('$CONTROLLER/list_models', timeout=5).json()['models']"; }
api_lists() { echo "'$1' in {m['id'] for m in s.get('$API/v1/models', timeout=5).json()['data']}"; }

# start_controller PORT: python -m fastchat.serve.controller at CONTROLLER, ready when it answers.
start_controller() {
    CONTROLLER=http://127.0.0.1:$1
    start_server controller "$PYTHON" -m fastchat.serve.controller --host 127.0.0.1 --port "$1"
    wait_for controller "s.get('$CONTROLLER/test_connection', timeout=2).ok"
}

# start_api PORT: python -m fastchat.serve.openai_api_server at API for CONTROLLER, ready when
# /v1/models answers.
start_api() {
    API=http://127.0.0.1:$1
    start_server api "$PYTHON" -m fastchat.serve.openai_api_server --host 127.0.0.1 --port "$1" \
        --controller-address "$CONTROLLER"
    wait_for api "s.get('$API/v1/models', timeout=5).ok"
}

# start_worker NAME MODEL_PATH PORT [ENV=VALUE...]: a model worker serving MODEL_PATH as NAME (the
# server worker_NAME); it has registered when `wait_for worker_NAME "$(controller_lists NAME)"` returns.
start_worker() {
    local name=$1 path=$2 port=$3; shift 3
    # shellcheck disable=SC2086  # WORKER_ARGS is a list of flags
    start_server "worker_$name" env "$@" "$PYTHON" -m fastchat.serve.model_worker --model-path "$path" \
        --model-names "$name" --device "$DEVICE" --host 127.0.0.1 --port "$port" \
        --worker-address "http://127.0.0.1:$port" --controller-address "$CONTROLLER" \
        --limit-worker-concurrency "$LIMIT_WORKER_CONCURRENCY" ${WORKER_ARGS:-}
}

# check_decoder URL NAME yes|no: whether worker NAME at URL runs fastchat-spec's generate_stream (yes) or
# FastChat's own (no), from the "spec" field ours adds to each chunk; ends the script with 1 if not.
check_decoder() {
    "$PYTHON" - "${0##*/}" "$@" <<'PY' || exit 1
import json, sys
import requests
script, url, model, ours = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "yes"
s = requests.Session(); s.trust_env = False
params = {"model": model, "prompt": "Hello", "temperature": 0, "max_new_tokens": 4}
with s.post(url + "/worker_generate_stream", json=params, stream=True, timeout=300) as r:
    r.raise_for_status()
    last = [json.loads(c) for c in r.iter_lines(delimiter=b"\0") if c][-1]
if ("spec" in last) != ours:
    sys.exit(f"{script}: worker {model!r} runs " + ("FastChat's stock decoder: is fastchat-spec installed "
             "(pip install .) and CKPT a speculative checkpoint?" if ours
             else "our decoder: FASTCHAT_SPEC_DISABLE=1 was not honoured"))
print(f"{script}: {model!r} runs " + ("fastchat-spec's generate_stream" if ours else "FastChat's own"),
      file=sys.stderr)
PY
}

# stop_server NAME: SIGTERM (a worker finishes its open requests first), its group SIGKILLed after 120 s.
stop_server() {
    local name=$1 pid=${SERVER_PID[$1]}
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || { log "$name stopped"; return 0; }; sleep 0.2; done
    log "$name still running 120 s after SIGTERM: killed"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

# stop_servers: every server started, for the EXIT trap: SIGTERM to each process group, SIGKILL to
# what is left of them after 20 s.
stop_servers() {
    local pid alive
    for pid in "${SERVER_PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 100); do
        alive=0
        for pid in "${SERVER_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for pid in "${SERVER_PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
}
