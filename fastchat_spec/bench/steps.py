"""Step times of one base forward, against the memory-bandwidth floor.

  python -m fastchat_spec.bench.steps --shapes llama7b,small --context 512 --tree-nodes 64 --out steps.json

For each model shape (random weights, bf16) it times, with CUDA events:
  * hf_eager_1:  Hugging Face's forward for one token with a DynamicCache (FastChat's path);
  * graph_1:     our verification forward for one token, captured as a CUDA graph over a static cache;
  * graph_tree:  the same for a tree of ``--tree-nodes`` nodes;
and the floor: the weights' bytes over the device bandwidth measured by a large copy.
``--attention sdpa,flex_attention`` times every forward with each of Hugging Face's attention
implementations in turn (the worker loads sdpa; FlexAttention splits the keys of a short query
across the GPU, where SDPA's kernels give a head one block of queries).

With ``--profile``, the one-token and the tree graphs are also replayed under torch.profiler
and their kernels are summed per step by kind (matmuls, attention, fused Triton kernels, copies,
the rest): where the time above the floor goes. The matmuls' line says which share of
the copy bandwidth they reach on the weights they read (every linear layer and the
LM head; the embedding table is read one row at a time and is left out).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics

import torch

from fastchat_spec.bench.run import write_result
from fastchat_spec.generate.cuda_graphs import COMPILE_ENV, COMPILE_MODE_ENV, capture, freezing_enabled

# Hugging Face attention implementations the forwards can be timed with (--attention).
ATTENTIONS = ("sdpa", "flex_attention", "eager")
SHAPES = {
    "llama7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32, vocab_size=32000),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256),
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=12, vocab_size=16000),
}


def measure_bandwidth(device) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    n = 1 << 28  # 512 MB of bf16
    a = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    times = cuda_seconds(lambda: b.copy_(a), repeat=20)
    return 2 * a.numel() * a.element_size() / times


def cuda_seconds(fn, repeat=50, warmup=5, before=None) -> float:
    """Median seconds of ``fn`` on the device (CUDA events around each call); ``before``, if given, runs
    ahead of every call, outside the timed interval."""
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeat):
        if before is not None:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1000)
    return statistics.median(samples)


def time_graphed(fn, calls: int = 1, replays: int = 50) -> float:
    """Seconds per call of ``fn`` (no arguments, static buffers): ``calls`` of them captured in one CUDA
    graph the way the engine captures its steps, the graph's replays timed (median), so no launch is counted."""
    def every_call():
        for _ in range(calls):
            fn()

    replay, _ = capture(every_call, torch.device("cuda"))
    return cuda_seconds(replay, repeat=replays, warmup=1) / calls


def random_model(shape: str, device, max_positions: int, attention: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=max(4096, max_positions),
                         tie_word_embeddings=False, attn_implementation=attention)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


@torch.inference_mode()
def step_times(shape: str, context: int, tree_nodes: int, device, profile: bool = False,
               attention: str = "sdpa") -> dict:
    from transformers import DynamicCache

    from fastchat_spec.generate.cuda_graphs import GraphedForward
    from fastchat_spec.generate.kv_cache import new_cache
    from fastchat_spec.generate.tree import default_tree

    model = random_model(shape, device, context + tree_nodes, attention)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    prompt = torch.randint(0, model.config.vocab_size, (1, context), device=device)

    # FastChat's path: HF forward, one token, DynamicCache holding `context` tokens.
    cache = DynamicCache()
    model(input_ids=prompt, past_key_values=cache, use_cache=True)
    one = prompt[:, -1:]

    def hf_step():
        model(input_ids=one, past_key_values=cache, use_cache=True)
        cache.crop(context)

    hf = cuda_seconds(hf_step, repeat=30)

    static = new_cache(model.config, context + tree_nodes + 1, device, torch.bfloat16)
    tree = default_tree(4, num_nodes=tree_nodes - 1).to(device)
    start = torch.tensor(context, device=device)
    g1 = GraphedForward(model, static, torch.ones(1, 1, dtype=torch.bool, device=device))
    gt = GraphedForward(model, static, tree.ancestors)
    tok1, pos1 = one.view(1), torch.tensor([context], device=device)
    tokt = torch.randint(0, model.config.vocab_size, (tree.num_nodes,), device=device)
    post = start + tree.depth
    graph_1 = cuda_seconds(lambda: g1(tok1, pos1, start), repeat=100)
    graph_tree = cuda_seconds(lambda: gt(tokt, post, start), repeat=100)
    result = {"weight_bytes": weight_bytes, "hf_eager_1_ms": 1000 * hf, "graph_1_ms": 1000 * graph_1,
              "graph_tree_ms": 1000 * graph_tree, "tree_nodes": tree.num_nodes}
    if profile:
        embedding = model.get_input_embeddings().weight
        matmul_bytes = weight_bytes - embedding.numel() * embedding.element_size()
        result["profile_1"] = kernel_profile(lambda: g1(tok1, pos1, start), matmul_bytes)
        result["profile_tree"] = kernel_profile(lambda: gt(tokt, post, start), matmul_bytes)
    return result


KERNEL_KINDS = (  # (kind, pattern on the kernel's name), first match wins
    # A fused kernel's name lists the ops it feeds: one that holds a matmul (max-autotune fuses the
    # projections into reductions and templates) reads the weights, so it counts as one; the rest are "triton".
    ("matmul", re.compile(r"^triton_(red|per|tem)_\w*_mm(_|$)", re.I)),
    ("triton", re.compile(r"^triton_", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|attn|sdpa|cudnn", re.I)),
    ("matmul", re.compile(r"gemm|gemv|cutlass|nvjet|sm90_xmma|splitk|matmul|cublas|mm_", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy|cat_|index", re.I)),
)


def kernel_kind(name: str) -> str:
    return next((kind for kind, pattern in KERNEL_KINDS if pattern.search(name)), "other")


def kernel_profile(step, matmul_bytes: int, steps: int = 20) -> dict:
    """Device time per step of ``step``'s kernels by kind, from torch.profiler; the top kernels by name."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    names: dict[str, list] = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA or getattr(event, "is_user_annotation", False):
            continue
        us = event.time_range.elapsed_us() / steps
        kind = kernel_kind(event.name)
        kinds[kind] = kinds.get(kind, 0.0) + us
        entry = names.setdefault(event.name, [0, 0.0])
        entry[0] += 1
        entry[1] += us
    if not names:  # the profiler saw no kernels inside the graph's replays
        return {"device_us_per_step": None, "note": "no kernels recorded inside graph replays"}
    total_us = sum(kinds.values())
    matmul_us = kinds.get("matmul", 0.0)
    top = sorted(names.items(), key=lambda kv: -kv[1][1])[:12]
    return {"device_us_per_step": total_us,
            "us_per_step_by_kind": {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "kernels_per_step": sum(n for n, _ in names.values()) / steps,
            "matmul_tb_s": matmul_bytes / (matmul_us * 1e-6) / 1e12 if matmul_us else None,
            "top_kernels": [{"name": n[:120], "calls_per_step": c / steps, "us_per_step": round(us, 1)}
                            for n, (c, us) in top]}


def print_profile(prof, label: str, bandwidth: float) -> None:
    if prof and prof["device_us_per_step"] is None:
        print(f"  {label} profile: {prof['note']}", flush=True)
    elif prof:
        bandwidth_share = prof["matmul_tb_s"] and prof["matmul_tb_s"] * 1e12 / bandwidth
        print(f"  {label} profile: {prof['device_us_per_step']:.0f} us of kernels per step "
              f"({prof['kernels_per_step']:.0f} kernels): {prof['us_per_step_by_kind']}; matmuls at "
              f"{prof['matmul_tb_s'] or 0:.2f} TB/s ({bandwidth_share or 0:.0%} of the copy bandwidth)", flush=True)
        for k in prof["top_kernels"]:
            print(f"    {k['us_per_step']:8.1f} us  x{k['calls_per_step']:<5g} {k['name']}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastchat_spec.bench.steps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="llama7b,small", help=f"comma list of {sorted(SHAPES)}")
    p.add_argument("--context", type=int, default=512, help="tokens already in the cache")
    p.add_argument("--tree-nodes", type=int, default=64, help="nodes of the verified tree, root included")
    p.add_argument("--compile", default="0,1",
                   help="comma list: 0 = graphs of the eager forward, 1 = graphs of the torch.compiled forward")
    p.add_argument("--attention", default="sdpa",
                   help="comma list of Hugging Face attention implementations to time the forwards with "
                        f"({', '.join(ATTENTIONS)}); sdpa is what the worker loads")
    p.add_argument("--profile", action="store_true",
                   help="also profile the one-token and tree graphs: device time per step by kernel kind, top kernels")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    attentions = args.attention.split(",")
    if set(attentions) - set(ATTENTIONS):
        p.error(f"--attention: unknown {sorted(set(attentions) - set(ATTENTIONS))}; choose from {ATTENTIONS}")
    if not torch.cuda.is_available():
        raise SystemExit("bench.steps times CUDA graphs: it needs a CUDA GPU")
    device = torch.device("cuda")
    bandwidth = measure_bandwidth(device)
    result = {"device": torch.cuda.get_device_name(0), "date": datetime.date.today().isoformat(),
              "bandwidth_tb_s": bandwidth / 1e12, "context": args.context,
              "compile_mode": os.environ.get(COMPILE_MODE_ENV) or "default",
              "compile_freeze": freezing_enabled(), "shapes": {}}
    runs = [(s, c, a) for s in args.shapes.split(",") for c in args.compile.split(",") for a in attentions]
    for shape, compiled, attention in runs:
        os.environ[COMPILE_ENV] = compiled
        r = step_times(shape, args.context, args.tree_nodes, device, args.profile, attention)
        torch.cuda.empty_cache()  # the shape's model and caches are gone with step_times' frame
        r["compiled"], r["attention"] = compiled == "1", attention
        shape = shape + ("+compile" if compiled == "1" else "") + ("" if attention == "sdpa" else f"+{attention}")
        r["hbm_floor_ms"] = 1000 * r["weight_bytes"] / bandwidth
        r["ar_over_floor"] = r["graph_1_ms"] / r["hbm_floor_ms"]
        r["tree_over_ar"] = r["graph_tree_ms"] / r["graph_1_ms"]
        result["shapes"][shape] = r
        print(f"{shape}: HF eager {r['hf_eager_1_ms']:.2f} ms | graph 1 tok {r['graph_1_ms']:.2f} ms | "
              f"graph {r['tree_nodes']}-node tree {r['graph_tree_ms']:.2f} ms | floor {r['hbm_floor_ms']:.2f} ms "
              f"({r['ar_over_floor']:.2f}x floor, tree/AR {r['tree_over_ar']:.2f})", flush=True)
        for key, label in (("profile_1", "1 tok"), ("profile_tree", f"{r['tree_nodes']}-node tree")):
            print_profile(r.get(key), label, bandwidth)
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
