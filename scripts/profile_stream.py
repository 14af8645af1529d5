"""GPU: where the time goes at 1 and 16 clients, the engine loop alone and through generate_stream.

Usage (on the device; prompts from held-out ShareGPT as JSONL):
  PROMPTS=.gpu/prompts.jsonl SWITCH_MS=5,0.5 python scripts/profile_stream.py [CKPT]
For each Python switch interval in SWITCH_MS (sys.setswitchinterval; 5 ms is Python's default) it prints
the loop alone (bench.run.run_concurrent: tok/s, p50, rows per step, the loop thread's split between
batched steps, prefills and host steps) and 16 threads through FastChat's generate_stream, then a
cProfile of the stream side. BENCHMARKS.md section 7 quotes its output.
"""
import cProfile, io, json, os, pstats, sys, threading, time

import fastchat_spec; fastchat_spec.register()
from fastchat.model.model_adapter import load_model, get_generate_stream_function
from fastchat_spec.bench.prompts import load_prompts
from fastchat_spec.bench.run import run_concurrent

ck = sys.argv[1] if len(sys.argv) > 1 else "fastchat_spec/models/medusa-vicuna-nano"
TOKENS = int(os.environ.get("TOKENS", "128"))
model, tok = load_model(ck, device="cuda")
stream = get_generate_stream_function(model, ck)
prompts = [p.text for p in load_prompts(ck, os.environ.get("PROMPTS", ".gpu/prompts.jsonl"), 100)
           if len(tok(p.text).input_ids) + TOKENS < 2000][:48]  # prompts that fit the nano model's context


def params(p):
    return {"prompt": p, "temperature": 0, "max_new_tokens": TOKENS, "echo": False, "stop": "</s>"}


def through_stream(c):
    todo = list(prompts); lock = threading.Lock(); toks = [0]; lat = []
    def client():
        while True:
            with lock:
                if not todo: return
                p = todo.pop()
            t0 = time.perf_counter(); last = None
            for last in stream(model, tok, params(p), "cuda", 2048): pass
            lat.append(time.perf_counter() - t0)
            with lock: toks[0] += last["usage"]["completion_tokens"]
    t0 = time.perf_counter(); th = [threading.Thread(target=client) for _ in range(c)]
    [t.start() for t in th]; [t.join() for t in th]
    wall = time.perf_counter() - t0; lat.sort()
    return {"tok_s": round(toks[0] / wall, 1), "p50_s": round(lat[len(lat) // 2], 4)}


def _rounded(v):
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return round(v, 4) if isinstance(v, float) else v


list(stream(model, tok, params(prompts[0]), "cuda", 2048))
ids = [tok(p).input_ids for p in prompts]
for ms in [float(x) for x in os.environ.get("SWITCH_MS", "5").split(",")]:
    sys.setswitchinterval(ms / 1000)
    for c in (1, 16):
        r = run_concurrent(model, ids, TOKENS, 0.0, tok.eos_token_id, c)
        r.pop("text_ids")
        print("switch_ms", ms, "loop only", c, json.dumps(_rounded(r)))
        print("switch_ms", ms, "generate_stream", c, json.dumps(through_stream(c)))
pr = cProfile.Profile(); pr.enable(); through_stream(16); pr.disable()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18); print(s.getvalue()[:4000])
