"""The tree step's attention alone, by SDPA backend and layout: where a 64-node tree loses its time.

  python -m fastchat_spec.bench.attention --context 512 --tree-nodes 64 --out attention.json

Llama-7B shape (32 heads of 128, bf16): the tree's queries attend to `context` cached keys and
to the tree's own keys through the ancestor mask, over a cache of `--capacity` slots (the rest
masked, as in a worker's bucketed cache). Timed per layer (CUDA-graph replays, median):
  * each SDPA backend that accepts the mask, on the whole cache with a boolean or additive mask;
  * as the verification forward calls it: the query a transposed view (Hugging Face's layout)
    and the engine's own mask (``generate.verify.attention_mask``), eager and torch.compiled;
  * FlexAttention (compiled) with the tree as a block mask, which skips the masked blocks;
  * split: the cached prefix without a mask (every node sees all of it) and the tree's own
    keys with the mask, merged by their log-sum-exps.
The profile of the whole tree step (``bench.steps --profile``) gives the in-graph time to compare.
"""
from __future__ import annotations

import argparse
import datetime
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastchat_spec.bench.steps import measure_bandwidth, time_graphed
from fastchat_spec.generate.tree import default_tree
from fastchat_spec.generate.verify import attention_mask

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def tree_mask(nodes: int, device) -> torch.Tensor:
    """The (nodes, nodes) ancestor-or-self mask of the tree bench.steps verifies (``default_tree``)."""
    return default_tree(4, num_nodes=nodes - 1).ancestors.to(device)


def split_attention(q, k_prefix, v_prefix, k_tree, v_tree, tree_bias):
    """Attention over [prefix | tree] as two parts merged by their log-sum-exps."""
    scale = q.shape[-1] ** -0.5
    out_p, lse_p = torch.ops.aten._scaled_dot_product_flash_attention(q, k_prefix, v_prefix, scale=scale)[:2]
    scores = (q @ k_tree.transpose(-1, -2)).float() * scale + tree_bias
    lse_t = torch.logsumexp(scores, dim=-1)
    out_t = torch.softmax(scores, dim=-1).to(q.dtype) @ v_tree
    lse = torch.logaddexp(lse_p, lse_t)
    return (out_p * (lse_p - lse).exp().unsqueeze(-1).to(q.dtype)
            + out_t * (lse_t - lse).exp().unsqueeze(-1).to(q.dtype))


@torch.inference_mode()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--tree-nodes", type=int, default=64)
    parser.add_argument("--capacity", type=int, default=None,
                        help="cache slots attended over (default context + tree nodes + 1, as bench.steps)")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("fastchat_spec.bench.attention times GPU kernels: no CUDA device here")
    device, dtype = torch.device("cuda"), torch.bfloat16
    t, c, h, d = args.tree_nodes, args.context, args.heads, args.head_dim
    cap = args.capacity or c + t + 1
    if cap < c + t:
        raise SystemExit(f"--capacity {cap} holds fewer than the context and the tree ({c + t})")
    q = torch.randn(1, h, t, d, device=device, dtype=dtype)
    q_hf = torch.randn(1, t, h, d, device=device, dtype=dtype).transpose(1, 2)  # as Hugging Face's attention has it
    k = torch.randn(1, h, cap, d, device=device, dtype=dtype)
    v = torch.randn(1, h, cap, d, device=device, dtype=dtype)
    tree = tree_mask(t, device)
    start = torch.tensor(c, device=device)
    engine_mask = attention_mask(start, tree, cap, dtype)  # (1, 1, t, cap), as the verification forward passes it
    visible = engine_mask[0, 0] == 0
    bias = torch.zeros(t, cap, device=device, dtype=dtype).masked_fill(~visible, float("-inf"))
    tree_bias = torch.zeros(t, t, device=device).masked_fill(~tree, float("-inf"))
    bandwidth = measure_bandwidth(device)
    live_kv_bytes = 2 * h * (c + t) * d * k.element_size()
    report = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(device),
              "context": c, "tree_nodes": t, "capacity": cap, "heads": h, "head_dim": d,
              "bandwidth_tb_s": bandwidth / 1e12, "kv_floor_us": 1e6 * live_kv_bytes / bandwidth, "us": {},
              "max_abs_err": {}}
    runs = {f"{name} ({kind} mask)": (q, lambda backend=backend, mask=mask: _sdpa(q, k, v, mask, backend))
            for name, backend in BACKENDS.items() for kind, mask in (("bool", visible), ("additive", bias))}
    runs["as verified: HF query layout, engine mask"] = (q_hf, lambda: F.scaled_dot_product_attention(
        q_hf, k, v, attn_mask=engine_mask))
    compiled_sdpa = torch.compile(F.scaled_dot_product_attention, dynamic=False)
    runs["as verified, compiled"] = (q_hf, lambda: compiled_sdpa(q_hf, k, v, attn_mask=engine_mask))
    runs["flex attention, tree as a block mask"] = (q, flex_attention_over(q, k, v, visible))
    runs["split: flash prefix + masked tree"] = (q, lambda: split_attention(q, k[:, :, :c], v[:, :, :c],
                                                                           k[:, :, c:c + t], v[:, :, c:c + t],
                                                                           tree_bias))
    for name, (query, run) in runs.items():
        try:
            reference = F.scaled_dot_product_attention(query.float(), k.float(), v.float(), attn_mask=visible)
            err = (run().float() - reference).abs().max().item()
            report["us"][name], report["max_abs_err"][name] = 1e6 * time_graphed(run, calls=32), err
            print(f"{name:44s} {report['us'][name]:7.1f} us per layer (max |err| {err:.3g})", flush=True)
        except Exception as e:  # a backend or compiler that refuses this shape: say so, time the rest
            print(f"{name:44s} not run: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}",
                  flush=True)
    print(f"reading the live keys and values: {report['kv_floor_us']:.1f} us per layer", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


def flex_attention_over(q, k, v, visible: torch.Tensor):
    """A no-argument call of compiled FlexAttention whose block mask is ``visible`` (queries x keys, bool)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = create_block_mask(lambda b, h, q_idx, kv_idx: visible[q_idx, kv_idx], None, None,
                                   q.shape[-2], k.shape[-2], device=q.device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda: compiled(q, k, v, block_mask=block_mask)


def _sdpa(q, k, v, mask, backend):
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


if __name__ == "__main__":
    main()
