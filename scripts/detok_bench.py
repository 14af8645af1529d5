"""CPU: detokenisation cost per token of the streaming path (IncrementalText) on the bundled tokenizer.

Usage: python scripts/detok_bench.py   (BENCHMARKS.md section 7 quotes its output: 198 -> 74 us/token,
then 40.9 -> 14.0 us/token with SentencePiece's own window decode)
Its second line times the answer's final full decode: the tokenizer skipping special tokens itself
(FastChat's call) against the stream's own (special ids dropped first, then the slow Llama tokenizer's
own steps without its per-piece special-token look-ups: 0.9 ms before, 0.09 ms with them skipped on
this 2-core CPU); both give the same text.
"""
import time
import fastchat_spec; fastchat_spec.register()
from fastchat.model.model_adapter import load_model
from fastchat_spec.generate.stream import IncrementalText
from fastchat_spec.generate.request import parse_request
import fastchat_spec as fs
m, tok = load_model(fs.default_model_path(), device="cpu")
req = parse_request({"prompt": "Tell me a story about a dragon.", "max_new_tokens": 512, "echo": False, "stop": ["###"]}, tok, 2048)
text = "Once upon a time, in a land far away, there lived a dragon named Ember. " * 12
ids = tok(text).input_ids[1:400]
t0 = time.perf_counter()
for _ in range(3):
    it = IncrementalText(tok, req)
    for i in range(0, len(ids), 2):
        it.extend(ids[i:i+2])
    final = it.final(ids)
dt = (time.perf_counter() - t0) / 3
print(f"{len(ids)} ids: {1000*dt:.1f} ms per request, {1e6*dt/len(ids):.1f} us/token; equal={it.text == final}")
t0 = time.perf_counter()
for _ in range(20):
    theirs = tok.decode(ids[:256], skip_special_tokens=True, spaces_between_special_tokens=False,
                        clean_up_tokenization_spaces=True)
skipping = (time.perf_counter() - t0) / 20
t0 = time.perf_counter()
for _ in range(20):
    ours = it._full(ids[:256])
dropped = (time.perf_counter() - t0) / 20
print(f"final decode of {len(ids[:256])} ids: {1000*skipping:.2f} ms skipping special tokens, {1000*dropped:.2f} ms the "
      f"stream's way; equal={theirs == ours}")
