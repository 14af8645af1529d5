"""GPU: 16 threads through generate_stream vs the engine loop alone, with a cProfile of the stream side.

Usage (on the device, prompts from held-out ShareGPT as JSONL): python scripts/profile_stream.py
BENCHMARKS.md section 7 quotes its output (loop alone vs generate_stream at 16 clients, tokenizer decode on top).
"""
import json, os, sys, threading, time, cProfile, pstats, io
sys.path.insert(0, os.getcwd())
import fastchat_spec; fastchat_spec.register()
from fastchat.model.model_adapter import load_model, get_generate_stream_function, get_conversation_template
from fastchat_spec.bench.prompts import load_turns
from fastchat_spec.bench.run import run_concurrent
ck = "fastchat_spec/models/medusa-vicuna-nano"
model, tok = load_model(ck, device="cuda")
stream = get_generate_stream_function(model, ck)
turns = [t[0][0] for t in load_turns(os.environ.get("PROMPTS", ".gpu/prompts.jsonl"), 48)]
prompts = []
for q in turns:
    conv = get_conversation_template(ck); conv.append_message(conv.roles[0], q); conv.append_message(conv.roles[1], None)
    prompts.append(conv.get_prompt())
def params(p): return {"prompt": p, "temperature": 0, "max_new_tokens": 128, "echo": False, "stop": "</s>"}
list(stream(model, tok, params(prompts[0]), "cuda", 2048))
ids = [tok(p).input_ids[-1900:] for p in prompts]
for c in (1, 16):
    r = run_concurrent(model, ids, 128, 0.0, tok.eos_token_id, c)
    r.pop("text_ids"); print("loop only", c, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
def through_stream(c, prof=None):
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
    print("generate_stream", c, "tok/s", round(toks[0] / wall, 1), "p50", round(lat[len(lat)//2], 3))
through_stream(1); through_stream(16)
pr = cProfile.Profile(); pr.enable(); through_stream(16); pr.disable()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18); print(s.getvalue()[:4000])
