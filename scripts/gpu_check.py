"""On a CUDA machine: every method's graphed path, alone and 16 at a time, against FastChat's greedy text.

For each method (Medusa, Hydra, Hydra++, Chimera in both head layouts, our AR
decoder, CLLM/Jacobi), a tiny checkpoint is written, loaded on the GPU, and
each prompt is decoded
  1. by FastChat's own generate_stream on the base (the reference),
  2. by our generate_stream alone (one request in the engine loop),
  3. by our generate_stream from 16 threads at once (batched steps),
  4. 16 at once again, with sampled requests mixed in (greedy rows must not change).
float32 must match everywhere; bfloat16 agreement is reported. The CPU suite
cannot see these paths (CUDA graphs, capture while other threads run).

Usage: python scripts/gpu_check.py [--out result.json]
"""
import argparse
import json
import os
import sys
import tempfile
import threading

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fastchat_spec  # noqa: E402

fastchat_spec.register()
from fastchat.model.model_adapter import get_generate_stream_function, load_model  # noqa: E402
from fastchat.serve.inference import generate_stream as fastchat_stream  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from fastchat_spec.adapters.chimera import write_chimera_checkpoint  # noqa: E402
from fastchat_spec.adapters.hydra import write_hydra_checkpoint  # noqa: E402
from fastchat_spec.adapters.medusa import write_medusa_checkpoint  # noqa: E402
from fastchat_spec.generate.loop import engine_for  # noqa: E402
from tests import tiny  # noqa: E402
from tests.test_chimera import random_drafter  # noqa: E402
from tests.test_hydra import oracle_heads  # noqa: E402

CONTEXT = 1024
DEVICE = "cuda"
MAX_NEW = 64


def checkpoints(d: str) -> dict:
    tok = tiny.build_tokenizer(os.path.join(d, "tok"))
    base_dir = tiny.build_llama(os.path.join(d, "vicuna-tiny"), tok)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    out = {"base": base_dir}
    for name, write, drafter in (
        ("medusa", write_medusa_checkpoint, tiny.oracle_medusa_heads(base_dir, 3)),
        ("hydra", write_hydra_checkpoint, oracle_heads(base, 3, "mlp")),
        ("hydra++", write_hydra_checkpoint, oracle_heads(base, 3, "prefix-mlp")),
        ("chimera", write_chimera_checkpoint, random_drafter(base, 3)),
        ("chimera-published", write_chimera_checkpoint, random_drafter(base, 3, head_arch="published")),
    ):
        out[name] = os.path.join(d, name.replace("+", "p"))
        write(out[name], drafter, base_dir)
    cllm = os.path.join(d, "consistency-llm-tiny")
    AutoModelForCausalLM.from_pretrained(base_dir).save_pretrained(cllm)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base_dir).save_pretrained(cllm)
    out["cllm"] = cllm
    return out


def params(prompt, **extra):
    return {"prompt": prompt, "temperature": 0.0, "max_new_tokens": MAX_NEW, "echo": False, **extra}


def together(stream, model, tok, requests):
    results = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def run(i):
        barrier.wait()
        results[i] = list(stream(model, tok, requests[i], DEVICE, CONTEXT))[-1]["text"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def check(name, path, base_dir, dtype, prompts, method=None):
    base, btok = load_model(base_dir, device=DEVICE, dtype=dtype)
    reference = [list(fastchat_stream(base, btok, params(p), DEVICE, CONTEXT))[-1]["text"] for p in prompts]
    model, tok = load_model(path, device=DEVICE, dtype=dtype)
    stream = get_generate_stream_function(model, path)
    if method == "ar":
        from fastchat_spec.bench.run import run_engine

        alone = [tok.decode(run_engine(model, tok(p).input_ids, MAX_NEW, 0.0, tok.eos_token_id, method="ar").text_ids,
                            skip_special_tokens=True) for p in prompts]
        return {"method": name, "dtype": str(dtype), "alone_vs_fastchat": _rate(alone, reference)}
    alone = [list(stream(model, tok, params(p), DEVICE, CONTEXT))[-1]["text"] for p in prompts]
    batch = together(stream, model, tok, [params(p) for p in prompts])
    mixed_requests = [params(p) for p in prompts[:8]] + [params(p, temperature=0.8) for p in prompts[8:16]]
    mixed = together(stream, model, tok, mixed_requests)[:8]
    loop = engine_for(model, CONTEXT)
    return {
        "method": name, "dtype": str(dtype),
        "alone_vs_fastchat": _rate(alone, reference),
        "batched16_vs_alone": _rate(batch, alone),
        "batched16_vs_fastchat": _rate(batch, reference),
        "greedy_next_to_sampled_vs_alone": _rate(mixed, alone[:8]),
        "loop": loop.status(),
    }


def _rate(a, b):
    return sum(x == y for x, y in zip(a, b)) / len(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only smoke-tests this script")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    d = tempfile.mkdtemp()
    paths = checkpoints(d)
    prompts = [" ".join(tiny.corpus(3, seed=i)) for i in range(16)]
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        for name in ("medusa", "hydra", "hydra++", "chimera", "chimera-published", "cllm"):
            try:
                r = check(name, paths[name], paths["base"], dtype, prompts)
            except Exception as error:  # noqa: BLE001 - report every method, then fail
                r = {"method": name, "dtype": str(dtype), "error": repr(error)}
            print(json.dumps(r), flush=True)
            results.append(r)
        r = check("ar", paths["medusa"], paths["base"], dtype, prompts, method="ar")
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE, "results": results}, f, indent=2)
    fp32 = [r for r in results if r["dtype"] == "torch.float32"]
    bad = [r for r in fp32 if "error" in r or any(v != 1.0 for k, v in r.items() if k.endswith(("fastchat", "alone")))]
    print("float32: every method exact alone and batched" if not bad else f"float32 FAILURES: {bad}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
