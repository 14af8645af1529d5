"""Each projection GEMM of a decoder layer, alone, against the time its weight takes to read.

  python -m fastchat_spec.bench.gemms --shapes llama7b --rows 1,64 --splits 1,2,4,8 --out gemms.json

A tree step multiplies every weight by as many rows as the tree has nodes. When those GEMMs have
few output tiles (Llama-7B's o and down projections give 4096 outputs) they occupy a fraction of
the GPU and read their weight far below the copy bandwidth. Splitting the reduction dimension K
into S parts (a batched GEMM over the parts, then a sum) gives S times the tiles. This tool times,
for each projection and row count, cuBLAS's plain GEMM (S = 1) and the split-K forms (the parts
copied into their own tensor, and read in place as a strided view of the weight), each captured
with its weight rotated through enough copies that no replay finds it in the L2 cache, and prints
the share of the copy bandwidth each reaches.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math

import torch

from fastchat_spec.bench.steps import SHAPES, measure_bandwidth, time_graphed

L2_BYTES_TO_BEAT = 256 << 20  # rotate weights through more than any GPU's L2 cache


def projections(shape: str) -> dict[str, tuple[int, int]]:
    """Name -> (N outputs, K inputs) of each linear layer of one decoder layer, fused as served."""
    s = SHAPES[shape]
    hidden, inter = s["hidden_size"], s["intermediate_size"]
    head_dim = hidden // s["num_attention_heads"]
    qkv = hidden + 2 * s["num_key_value_heads"] * head_dim
    return {"qkv": (qkv, hidden), "o": (hidden, hidden), "gate_up": (2 * inter, hidden),
            "down": (hidden, inter)}


def split_k_weight(weight: torch.Tensor, splits: int, copy: bool = True) -> torch.Tensor:
    """[N, K] -> [S, N, K/S]: part s holds columns s*K/S ... (s+1)*K/S - 1 of every row. Without `copy`
    a strided view of the weight itself (cuBLAS reads it with leading dimension K): no second copy."""
    n, k = weight.shape
    parts = weight.view(n, splits, k // splits).transpose(0, 1)
    return parts.contiguous() if copy else parts


def split_k_linear(x: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """x @ W.T with W given as split_k_weight(W, S): S GEMMs in one batch, summed."""
    splits, _, k_part = parts.shape
    pieces = x.view(x.shape[0], splits, k_part).transpose(0, 1)  # [S, M, K/S]
    return torch.bmm(pieces, parts.transpose(1, 2)).sum(0)


def time_gemm(rows: int, n: int, k: int, splits: int, device, copy: bool = True, replays: int = 20) -> float:
    """Seconds per GEMM of `rows` x K by K x N (bf16), as the median of CUDA-graph replays."""
    weight_bytes = 2 * n * k
    copies = max(2, math.ceil(L2_BYTES_TO_BEAT / weight_bytes))
    weights = [torch.randn(n, k, device=device, dtype=torch.bfloat16) / math.sqrt(k) for _ in range(copies)]
    if splits > 1:
        weights = [split_k_weight(w, splits, copy) for w in weights]
    x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
    run = (lambda w: split_k_linear(x, w)) if splits > 1 else (lambda w: torch.nn.functional.linear(x, w))

    def every_copy():
        for w in weights:
            run(w)

    return time_graphed(every_copy, replays=replays) / copies


def check_split_k(device) -> float:
    """The largest difference between the split and plain products on one shape (a sanity check)."""
    w = torch.randn(256, 512, device=device, dtype=torch.float32)
    x = torch.randn(8, 512, device=device, dtype=torch.float32)
    return max((split_k_linear(x, split_k_weight(w, 4, copy)) - x @ w.T).abs().max().item() for copy in (True, False))


@torch.inference_mode()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="llama7b", help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--rows", default="1,64", help="comma-separated row counts (tree nodes)")
    parser.add_argument("--splits", default="1,2,4,8", help="comma-separated K splits (1 = plain GEMM)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("fastchat_spec.bench.gemms times GPU kernels: no CUDA device here")
    device = torch.device("cuda")
    bandwidth = measure_bandwidth(device)
    report = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(device),
              "bandwidth_tb_s": bandwidth / 1e12, "split_k_max_abs_diff_fp32": check_split_k(device), "gemms": []}
    splits_list = [int(s) for s in args.splits.split(",")]
    variants = [(s, copy) for s in splits_list for copy in ((True,) if s == 1 else (True, False))]
    for shape in args.shapes.split(","):
        for name, (n, k) in projections(shape).items():
            floor = 2 * n * k / bandwidth
            for rows in (int(r) for r in args.rows.split(",")):
                for splits, copy in variants:
                    if k % splits:
                        print(f"{shape} {name}: K = {k} does not split into {splits} parts; skipped", flush=True)
                        continue
                    seconds = time_gemm(rows, n, k, splits, device, copy)
                    row = {"shape": shape, "gemm": name, "rows": rows, "n": n, "k": k, "splits": splits,
                           "weight": "plain" if splits == 1 else "split copy" if copy else "strided view",
                           "us": 1e6 * seconds, "floor_us": 1e6 * floor, "bandwidth_share": floor / seconds}
                    report["gemms"].append(row)
                    layout = "" if splits == 1 else f" ({row['weight']})"
                    print(f"{shape} {name:7s} {rows:3d}x{k}x{n} split {splits}{layout}: {row['us']:7.1f} us "
                          f"(floor {row['floor_us']:.1f} us, {row['bandwidth_share']:.0%} of the copy bandwidth)",
                          flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
