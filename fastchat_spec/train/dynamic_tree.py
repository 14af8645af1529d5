"""What a tree chosen afresh at every step by the draft's own confidence would accept, estimated offline.

EAGLE-2 (Li et al. 2024) grows its candidate tree per step from the drafter's
confidence instead of drafting one fixed shape. Before building that into the
engine, this estimates what it would give Medusa heads, on the same held-out
positions that ``tree_search`` uses for static trees.

At a held-out position each draft depth k has a distribution p_k over tokens.
Medusa's heads read only the base's hidden state there, so depth k's
candidates do not depend on the path above them, and the rank path
(r_1, ..., r_j) has the draft confidence p_1(r_1) * ... * p_j(r_j). That never
grows along a path, so the N most confident paths form a tree (every prefix of
a chosen path is chosen). A dynamic tree of N nodes takes those N paths at each
step and accepts the longest prefix of the position's true rank tuple among
them; averaged over positions, as ``generate.tree.joint_expected_length``
averages a static tree, 1 + that is its expected tokens per step.

Caveats: a path tied in confidence with the true prefix counts in the prefix's
favour; near an answer's end, depths without a target offer no candidates.

Hydra's depths depend on the drafted path, and teacher-forced predictions give
their distributions only along the true path. For them, ``python -m
fastchat_spec.train.dynamic_tree --model-path CKPT`` decodes the base's greedy
answers to held-out prompts and, at every step position, drafts every node of
a full tree (ranks < ``--top`` at each depth) as the engine drafts it, with its
path's confidence. A dynamic tree of N nodes accepts the true path's nodes
among the position's N most confident; the best static tree of N nodes is the
N nodes most often on the true path over all positions (fitted to the very
positions it is scored on, which favours it). Chimera is not covered: its
drafts also go through an encoder with a cache of its own.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from fastchat_spec.generate.tree import (Tree, accepted_path_frequencies, joint_expected_length,
                                         most_frequent_tree)

CHUNK_FLOATS = 1 << 24  # path scores held at once (positions x (K + K^2 + ... + K^D))


def path_scores(log_probs: torch.Tensor) -> torch.Tensor:
    """(P, M) log confidence of every rank path of depth 1..D with ranks < K, from (P, D, K) log-probs.

    Paths are listed depth by depth, each depth's in lexicographic rank order.
    """
    positions, depths, _ = log_probs.shape
    scores, running = [], log_probs.new_zeros(positions, 1)
    for k in range(depths):
        running = (running[:, :, None] + log_probs[:, None, k, :]).reshape(positions, -1)
        scores.append(running)
    return torch.cat(scores, dim=1)


def accepted_lengths(log_probs: torch.Tensor, ranks: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """(P,) drafts the N most confident paths accept at each position.

    ``log_probs`` (P, D, K): each depth's top-K log-probabilities, best first;
    ``ranks`` (P, D): the rank of the true token at each depth (teacher-forced),
    negative or >= K where the tuple ends (no target, or a rank no path holds).
    """
    top = log_probs.shape[-1]
    hit = (ranks >= 0) & (ranks < top)
    own = log_probs.gather(2, ranks.clamp(0, top - 1).unsqueeze(2)).squeeze(2)  # (P, D)
    prefix = own.masked_fill(~hit, 0.0).cumsum(1)  # confidence of the true prefix of each length
    lengths = []
    paths = sum(top ** (k + 1) for k in range(log_probs.shape[1]))
    chunk = max(1, CHUNK_FLOATS // paths)
    for start in range(0, log_probs.shape[0], chunk):
        rows = slice(start, start + chunk)
        ascending = (-path_scores(log_probs[rows])).sort(dim=1).values  # (c, M): most confident first
        beaten_by = torch.searchsorted(ascending, (-prefix[rows]).contiguous(), side="left")  # (c, D)
        chosen = (beaten_by < num_nodes) & hit[rows]
        lengths.append(chosen.long().cumprod(1).sum(1))
    return torch.cat(lengths) if lengths else ranks.new_zeros(0)


class DynamicTreeEstimate:
    """Accumulates, over held-out batches, the tokens per step of dynamic trees of several sizes."""

    def __init__(self, sizes: Sequence[int], top: int):
        self.sizes, self.top = list(sizes), top
        self.accepted = {n: 0 for n in self.sizes}
        self.positions = 0

    def add(self, log_probs: torch.Tensor, ranks: torch.Tensor) -> None:
        """One batch's positions: (P, D, K) top-K log-probs and (P, D) true ranks (see ``accepted_lengths``)."""
        self.positions += ranks.shape[0]
        for n in self.sizes:
            self.accepted[n] += int(accepted_lengths(log_probs, ranks, n).sum())

    def tokens_per_step(self) -> dict[int, float]:
        if not self.positions:
            raise ValueError("no held-out position had a draft target: nothing to estimate")
        return {n: 1.0 + self.accepted[n] / self.positions for n in self.sizes}


# --------------------------------------------------------------------------- heads that read the drafted path
# Hydra's head k reads the tokens drafted before it, so a node's distribution depends on its path and the
# teacher-forced grid above does not give it. Instead every node of a full tree (every rank path up to a
# depth) is drafted at each position, as the engine drafts it, together with its path's confidence; the
# dynamic tree of N nodes is then the N most confident nodes at that position, and the best static tree of N
# nodes ``generate.tree.most_frequent_tree`` of the paths accepted over all positions (fitted to them).
def full_tree(top: int, depth: int) -> Tree:
    """Every rank path with ranks < ``top`` and 1 to ``depth`` draft tokens."""
    paths = [()]
    every = []
    for _ in range(depth):
        paths = [p + (r,) for p in paths for r in range(top)]
        every += paths
    return Tree.from_paths(every)


def drafted_confidences(heads, embed: torch.nn.Module, feature: torch.Tensor, root: torch.Tensor,
                        tree: Tree) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, log-confidence), both (P, N): every node of ``tree`` drafted by Hydra ``heads`` at P positions.

    ``feature`` (P, H) is the heads' input at each position (``HydraHeads.feature``), ``root`` (P,) the
    base's token after it. Node 0 is the root (confidence 0); a node's confidence is the sum of its path's
    log-probabilities under the heads. The tokens are the ones ``HydraProposer.propose`` drafts.
    """
    from fastchat_spec.generate.proposers.hydra import depth_plan  # the engine's own drafting order

    positions = feature.shape[0]
    tokens = root.new_zeros(positions, tree.num_nodes)
    tokens[:, 0] = root
    confidence = feature.new_zeros(positions, tree.num_nodes, dtype=torch.float32)
    parent = tree.parent.to(feature.device)
    for step in depth_plan(tree.to(feature.device), heads.grounded):
        x = feature[:, None, :].expand(-1, step.paths.shape[0], -1)  # (P, R, H)
        if heads.grounded:
            x = torch.cat([x, embed(tokens[:, step.paths]).to(x.dtype).flatten(2)], dim=-1)
        logits, _ = heads.head(step.head, x)  # (P, R, V)
        top = logits.float().log_softmax(-1).topk(step.top_k, dim=-1)
        tokens[:, step.children] = top.indices[:, step.rows, step.ranks]
        confidence[:, step.children] = confidence[:, parent[step.children]] + top.values[:, step.rows, step.ranks]
    return tokens, confidence


def on_true_path(tokens: torch.Tensor, truth: torch.Tensor, tree: Tree) -> torch.Tensor:
    """(P, N) bool: the node's path is the true continuation. ``truth`` (P, D): the tokens after the root,
    negative where the text has ended."""
    hit = torch.zeros_like(tokens, dtype=torch.bool)
    hit[:, 0] = True
    parent = tree.parent.to(tokens.device)
    for d in range(1, tree.max_depth + 1):
        nodes = torch.tensor(tree.nodes_at_depth(d), device=tokens.device)
        hit[:, nodes] = hit[:, parent[nodes]] & (tokens[:, nodes] == truth[:, d - 1 : d])
    return hit


def chosen_accepted(hit: torch.Tensor, chosen: torch.Tensor, tree: Tree) -> torch.Tensor:
    """(P,) draft tokens accepted when only the ``chosen`` (P, N) nodes are drafted: the true path's nodes,
    depth by depth, while each is chosen."""
    on = hit & chosen
    depths = [on[:, tree.nodes_at_depth(d)].any(1) for d in range(1, tree.max_depth + 1)]
    return torch.stack(depths, 1).long().cumprod(1).sum(1)


def most_confident(confidence: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """(P, N) bool: each position's ``num_nodes`` most confident nodes besides the root (its dynamic tree)."""
    order = confidence[:, 1:].argsort(dim=1, descending=True, stable=True)
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    chosen[:, 1:].scatter_(1, order[:, :num_nodes], True)
    return chosen


def accepted_paths(hit: torch.Tensor, tree: Tree) -> Counter:
    """{rank path: positions}: the path of each position's deepest node on the true path (``()``: none)."""
    deepest = (hit.long() * tree.depth.to(hit.device)).argmax(1).tolist()  # one hit node per depth
    return Counter(tree.paths[node - 1] if node else () for node in deepest)


def greedy_positions(model, prompt_ids: list[int], max_new_tokens: int, depth: int):
    """(feature (P, H), root (P,), truth (P, depth)) at every step position of the base's greedy answer.

    At position i the base has run up to token i and its greedy token i+1 is the root; the true drafts
    are tokens i+2 .. i+depth+1 of the greedy text (-1 past its end), which greedy decoding accepts.
    """
    from fastchat_spec.train.trainer import base_hidden_states

    base, heads = model.base, model.drafter
    device = next(base.parameters()).device
    prompt = torch.tensor([prompt_ids], device=device)
    text = base.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                         do_sample=False)[0]
    hidden, _ = base_hidden_states(base, text[None], with_logits=False)
    feature = heads.feature(hidden)[0]
    first, last = len(prompt_ids) - 1, text.numel() - 3  # the last position with a true draft token
    if last < first:
        return None
    rows = torch.arange(first, last + 1, device=device)
    padded = torch.cat([text, text.new_full((depth + 2,), -1)])
    truth = torch.stack([padded[rows + 2 + d] for d in range(depth)], 1)
    return feature[rows], text[rows + 1], truth


def scored_positions(model, tokenizer, prompts, max_new_tokens: int, tree: Tree, chunk: int = 64):
    """(hit, confidence, prompts too long): ``on_true_path`` and ``drafted_confidences`` of every step
    position of the base's greedy answers to ``prompts`` (``bench.prompts.Prompt``), stacked."""
    from fastchat.utils import get_context_length

    embed = model.base.get_input_embeddings()
    context = get_context_length(model.config)
    hits, confidences, too_long = [], [], 0
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt.text).input_ids
            if len(ids) + max_new_tokens > context:  # past the positions the base was trained on
                too_long += 1
                continue
            found = greedy_positions(model, ids, max_new_tokens, tree.max_depth)
            if found is None:  # the answer ended before a draft had a target
                continue
            for start in range(0, found[0].shape[0], chunk):
                feature, root, truth = (t[start : start + chunk] for t in found)
                tokens, confidence = drafted_confidences(model.drafter, embed, feature, root, tree)
                hits.append(on_true_path(tokens, truth, tree))
                confidences.append(confidence)
    if not hits:
        raise SystemExit(f"no prompt fits the model's {context} positions with {max_new_tokens} new tokens")
    return torch.cat(hits), torch.cat(confidences), too_long


def static_and_dynamic(hit: torch.Tensor, confidence: torch.Tensor, tree: Tree, sizes: Sequence[int]) -> dict:
    """{N: {"static_best": tokens per step, "dynamic": tokens per step}} for each tree size N."""
    frequencies = accepted_path_frequencies(accepted_paths(hit, tree), int(tree.rank.max()) + 1)
    out = {}
    for n in sizes:
        static = joint_expected_length(most_frequent_tree(frequencies, n), frequencies)
        dynamic = 1 + chosen_accepted(hit, most_confident(confidence, n), tree).float().mean().item()
        out[n] = {"static_best": round(static, 4), "dynamic": round(dynamic, 4)}
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m fastchat_spec.train.dynamic_tree --model-path HYDRA_CKPT``: dynamic against static trees."""
    import argparse
    import json

    from fastchat.model.model_adapter import load_model

    import fastchat_spec  # noqa: F401  (registers our adapters)
    from fastchat_spec.bench.prompts import load_prompts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="a Hydra or Hydra++ checkpoint")
    parser.add_argument("--prompts", default=None, help="JSONL with turns (default: held-out ShareGPT)")
    parser.add_argument("--num-prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--top", type=int, default=4, help="candidates per node of the full tree drafted")
    parser.add_argument("--depth", type=int, default=None, help="draft depth (default: every head)")
    parser.add_argument("--sizes", default="7,15,31,63", help="tree sizes (nodes besides the root)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk", type=int, default=64, help="positions drafted at once")
    args = parser.parse_args(argv)

    model, tokenizer = load_model(args.model_path, device=args.device)
    if getattr(model, "spec", None) is None or model.spec.method != "hydra":
        raise SystemExit(f"{args.model_path} is not a Hydra checkpoint; Medusa heads: tree_search --dynamic")
    model.eval()
    tree = full_tree(args.top, args.depth or model.drafter.num_heads)
    sizes = [int(n) for n in args.sizes.split(",")]
    if max(sizes) >= tree.num_nodes:
        raise SystemExit(f"--sizes must stay below the full tree's {tree.num_nodes - 1} nodes (raise --top)")
    prompts = load_prompts(args.model_path, args.prompts, args.num_prompts)
    hit, confidence, too_long = scored_positions(model, tokenizer, prompts, args.max_new_tokens, tree, args.chunk)
    rows = static_and_dynamic(hit, confidence, tree, sizes)
    for n, row in rows.items():
        print(f"{n:4d} nodes: best static tree {row['static_best']:.3f}, dynamic tree {row['dynamic']:.3f} "
              f"tokens per step")
    result = {"model_path": args.model_path, "positions": hit.shape[0], "prompts_too_long": too_long,
              "full_tree_nodes": tree.num_nodes - 1, "top": args.top, "depth": tree.max_depth,
              "tokens_per_step": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
