"""Decide how much of a verified tree to keep.

Three rules, all returning the same ``Decision``:

* ``accept_greedy``: keep the deepest path whose every token is the target's
  argmax. Exactly lossless for greedy decoding.
* ``accept_sampling`` (default at temperature > 0): recursive rejection
  sampling over the tree. A draft node is a point mass, so candidate c of a
  node is accepted with probability p(c) / (mass not yet rejected) and on
  rejection removed from p; if every child is rejected, the bonus token is
  drawn from what is left. Each emitted token therefore has exactly the
  target's distribution (Leviathan et al. 2023; SpecInfer's multi-candidate
  form), whatever the drafts were.
* ``accept_typical``: Medusa's typical acceptance (opt-in, not lossless).

``greedy_nodes`` and ``sampled_nodes`` are the first two for rows of trees on
the device, with static shapes (the batched step, ``batch_step.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastchat_spec.generate.row_sampling import RowSampling, draw, row_probs
from fastchat_spec.generate.tree import Tree


@dataclass
class Decision:
    node: int  # deepest accepted node (0: only the root)
    path: torch.Tensor  # (D+1,) accepted nodes from the root, padded with ``node``; on device
    tokens: list[int]  # accepted draft tokens then the bonus token


def deepest_valid(tree: Tree, ok: torch.Tensor) -> torch.Tensor:
    """Index of the deepest node whose whole path (root excluded) is ok."""
    return deepest_valid_rows(tree, ok.unsqueeze(0))[0]


def deepest_valid_rows(tree: Tree, ok: torch.Tensor) -> torch.Tensor:
    """``deepest_valid`` for each row of ``ok`` (b, N): (b,) node indices (ties: the lowest index)."""
    bad_on_path = (tree.ancestors.unsqueeze(0) & ~ok.unsqueeze(1)).any(dim=2)  # (b, N)
    score = torch.where(bad_on_path, -1, tree.depth)
    return score.argmax(dim=1)


def greedy_nodes(tree: Tree, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Greedy acceptance of rows of trees: tokens and target argmaxes (b, N) -> deepest accepted node (b,)."""
    ok = tokens == target[:, tree.parent]
    ok[:, 0] = True
    return deepest_valid_rows(tree, ok)


def sampled_nodes(tree: Tree, tokens: torch.Tensor, logits: torch.Tensor,
                  sampling: RowSampling) -> tuple[torch.Tensor, torch.Tensor]:
    """Recursive rejection sampling for rows of trees, without the host: (b, N) tokens and (b, N, V) raw
    logits -> the deepest accepted node (b,) and the bonus token (b,).

    The walk goes down one level per round, all rows at once, for the tree's
    depth (a static count). At its node a row tries the children in rank
    order: child j is accepted with probability p(j) / (mass not yet
    rejected), a repeated token is tried once. A row whose children are all
    rejected (or that reached a leaf) stays there, and draws its bonus token
    from what is left of p at that node once the walk is over.
    """
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    kids_of = tree.children  # (N, C)
    width = kids_of.shape[1]
    earlier = torch.ones(width, width, dtype=torch.bool, device=tokens.device).tril(-1)  # [j, i]: i before j
    # Every node's children at once: their tokens, and which of them to try (real, not a repeat).
    kid_tokens = tokens[:, kids_of.clamp_min(0)]  # (b, N, C)
    real = (kids_of >= 0).expand_as(kid_tokens)
    repeated = ((kid_tokens.unsqueeze(3) == kid_tokens.unsqueeze(2)) & real.unsqueeze(2) & earlier).any(3)
    tried = (real & ~repeated).float()
    draws = torch.rand(tokens.shape[0], tree.max_depth, width, device=tokens.device)
    node = torch.zeros_like(rows)
    moving = torch.ones_like(rows, dtype=torch.bool)
    for level in range(tree.max_depth):
        probs = row_probs(logits[rows, node], sampling)  # (b, V) at each row's node
        p = probs.gather(1, kid_tokens[rows, node]) * tried[rows, node]
        left = 1 - (p.cumsum(dim=1) - p)  # mass not yet rejected when child j is tried
        accepted = (left > 0) & (draws[:, level] * left < p)
        moving &= accepted.any(dim=1)
        node = torch.where(moving, kids_of[node].gather(1, accepted.int().argmax(dim=1, keepdim=True))[:, 0], node)
    probs = row_probs(logits[rows, node], sampling)
    rejected = torch.zeros_like(probs).scatter_add_(1, kid_tokens[rows, node], tried[rows, node]) > 0
    rest = probs.masked_fill(rejected, 0.0)
    rest = torch.where(rest.sum(dim=1, keepdim=True) > 1e-12, rest, probs)  # rounding left no mass
    return node, draw(rest)


def _finish(tree: Tree, tokens: torch.Tensor, node: torch.Tensor, bonus: torch.Tensor) -> Decision:
    path = tree.path_nodes[node]
    # One host read per step: the path's tokens, the bonus and the depth.
    host = torch.cat([tokens[path], bonus.view(1), tree.depth[node].view(1), node.view(1)]).tolist()
    depth, node_i = host[-2], host[-1]
    return Decision(node=node_i, path=path, tokens=host[1 : 1 + depth] + [host[-3]])


def accept_greedy(tree: Tree, tokens: torch.Tensor, scores: torch.Tensor) -> Decision:
    """``scores`` (N, V): processed logits at every node."""
    target = scores.argmax(dim=-1)
    node = greedy_nodes(tree, tokens.unsqueeze(0), target.unsqueeze(0))[0]
    return _finish(tree, tokens, node, target[node])


def accept_typical(tree: Tree, tokens: torch.Tensor, scores: torch.Tensor, temperature: float,
                   threshold: float = 0.09, alpha: float = 0.3) -> Decision:
    """Medusa's typical acceptance: p(token) above min(threshold, alpha * exp(-entropy))."""
    if temperature < 1e-5:
        return accept_greedy(tree, tokens, scores)
    probs = torch.softmax(scores, dim=-1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum(-1)
    limit = torch.minimum(torch.full_like(entropy, threshold), alpha * torch.exp(-entropy))
    p_tok = probs[tree.parent, tokens]
    ok = p_tok > limit[tree.parent]
    ok[0] = True
    node = deepest_valid(tree, ok)
    bonus = torch.multinomial(probs[node], 1)[0]
    return _finish(tree, tokens, node, bonus)


def accept_sampling(tree: Tree, tokens: torch.Tensor, scores: torch.Tensor) -> Decision:
    """Lossless recursive rejection sampling with point-mass drafts: ``sampled_nodes`` on one row whose
    ``scores`` (N, V) are already processed (FastChat's processors, per node), so sampled as they are."""
    plain = RowSampling.zeros(1, scores.device)
    plain.sampled.fill_(True)
    node, bonus = sampled_nodes(tree, tokens.unsqueeze(0), scores.unsqueeze(0), plain)
    return _finish(tree, tokens, node[0], bonus[0])
