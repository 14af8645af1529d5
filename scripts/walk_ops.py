"""How many top-level torch ops one sampled walk (``accept.sampled_nodes``) dispatches: each is at least one
kernel on the GPU, where the walk is launch-bound (BENCHMARKS.md section 7, twentieth session).

Usage: python scripts/walk_ops.py [--rows 8] [--top-p 1.0]   (the bundled Medusa tree, its 8,000-token vocabulary)
"""
import argparse
import inspect
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from fastchat_spec.generate import accept  # noqa: E402
from fastchat_spec.generate.row_sampling import RowSampling  # noqa: E402
from fastchat_spec.generate.sampling import SamplingParams  # noqa: E402
from fastchat_spec.generate.tree import Tree  # noqa: E402

CHECKPOINT = os.path.join(ROOT, "fastchat_spec", "models", "medusa-vicuna-nano")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8, help="rows walked at once (default 8)")
    ap.add_argument("--top-p", type=float, default=1.0, help="every row's top-p (default 1: FastChat's default)")
    args = ap.parse_args()
    with open(os.path.join(CHECKPOINT, "config.json")) as f:
        config = json.load(f)
    tree = Tree.from_paths(config["medusa_choices"])
    vocab = 8000
    torch.manual_seed(0)
    logits = torch.randn(args.rows, tree.num_nodes, vocab)
    tokens = torch.randint(0, vocab, (args.rows, tree.num_nodes))
    sampling = RowSampling.zeros(args.rows, "cpu")
    for row in range(args.rows):
        sampling.set(row, SamplingParams(0.7, args.top_p, -1, 1.0))
    extra = {"cuts": args.top_p < 1} if "cuts" in inspect.signature(accept.sampled_nodes).parameters else {}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        accept.sampled_nodes(tree, tokens, logits, sampling, **extra)
    ops = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]
    print(f"tree depth {tree.max_depth}, {tree.num_nodes} nodes, {args.rows} rows, top-p {args.top_p}: "
          f"{len(ops)} top-level ops, {sum(e.name == 'aten::sort' for e in ops)} sorts")


if __name__ == "__main__":
    main()
