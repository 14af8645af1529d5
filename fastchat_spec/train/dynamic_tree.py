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
Hydra's and Chimera's depths depend on the drafted path, and teacher-forced
predictions give their distributions only along the true path, so the estimate
is for Medusa heads alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

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
