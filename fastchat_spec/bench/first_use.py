"""What an eager forward costs the first time its length is seen, by attention backend.

  python -m fastchat_spec.bench.first_use --model-path fastchat_spec/models/vicuna-nano --out first_use.json

A prompt's forward runs eagerly wherever its length decides the shapes: a
proposer's own layers over the prompt (Hydra++'s prefix layer, Chimera's
encoder), and the base's prefill on the host path (sampling) or past the
graphed lengths. This times that forward (the base, with the engine's additive
mask over a static cache) at lengths never seen before, once and then again,
under each attention policy: ``default`` lets SDPA choose (cuDNN first on
Hopper), ``no-cudnn`` is what ``generate.verify.eager_attention`` runs. The
difference between the first call and the repeat is what a request pays when
its prompt length is new to the process.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from fastchat_spec.bench.run import _sync, result_header, write_result
from fastchat_spec.generate.kv_cache import new_cache
from fastchat_spec.generate.verify import base_forward, causal_visibility, eager_attention

POLICIES = {"default": contextlib.nullcontext, "no-cudnn": eager_attention}


def fresh_lengths(count: int, first: int, policy_index: int) -> list[int]:
    """``count`` lengths from ``first`` on, none shared between policies (each is new to the process)."""
    return [first + 37 * (i * len(POLICIES) + policy_index) for i in range(count)]


def time_forward(base, cache, length: int, device) -> float:
    tokens = torch.randint(3, base.config.vocab_size, (length,), device=device)
    positions = torch.arange(length, device=device)
    start = torch.zeros((), dtype=torch.long, device=device)
    _sync(device)
    t0 = time.perf_counter()
    base_forward(base, cache, tokens, positions, start, causal_visibility(length, device))
    _sync(device)
    return time.perf_counter() - t0


@torch.inference_mode()
def measure(base, device, dtype, count: int, first: int, capacity: int) -> dict:
    cache = new_cache(base.config, capacity, device, dtype)
    time_forward(base, cache, first - 1, device)  # the process's first forward (libraries load) is not counted
    out = {}
    for index, (name, policy) in enumerate(POLICIES.items()):
        rows = []
        with policy():
            for length in fresh_lengths(count, first, index):
                once, again = time_forward(base, cache, length, device), time_forward(base, cache, length, device)
                rows.append({"length": length, "first_ms": 1e3 * once, "again_ms": 1e3 * again})
        out[name] = {
            "lengths": rows,
            "median_first_ms": statistics.median(r["first_ms"] for r in rows),
            "median_again_ms": statistics.median(r["again_ms"] for r in rows),
        }
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", default="fastchat_spec/models/vicuna-nano")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--lengths", type=int, default=12, help="fresh lengths per policy")
    parser.add_argument("--first-length", type=int, default=101)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    base = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype, attn_implementation="sdpa")
    base = base.to(device).eval()
    longest = fresh_lengths(args.lengths, args.first_length, len(POLICIES) - 1)[-1]
    capacity = max(longest + 64, base.config.max_position_embeddings)
    result = {
        **result_header("fastchat_spec.bench.first_use", args.device, argv),
        "model_path": args.model_path,
        "dtype": args.dtype,
        "policies": measure(base, device, dtype, args.lengths, args.first_length, capacity),
    }
    for name, row in result["policies"].items():
        print(f"{name}: first call at a new length {row['median_first_ms']:.2f} ms, "
              f"again {row['median_again_ms']:.2f} ms (median of {args.lengths} lengths)")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
