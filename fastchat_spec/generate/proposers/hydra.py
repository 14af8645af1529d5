"""Hydra / Hydra++ proposer: sequentially dependent heads, expanded depth by depth.

Head d-1 fills tree depth d. It runs once per depth on a batch made of every
node at depth d-1 that has children; each row sees the heads' input feature
(the base's last hidden state, or Hydra++'s prefix layer over it) and the
embeddings of the tokens on that node's path from the root. A child of rank r
takes its parent's r-th most likely token.

Per-generation state lives here, never on the modules: the last feature and,
for Hydra++, the prefix layer's own KV cache, which ``observe`` advances over
every newly committed hidden state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastchat_spec.generate.kv_cache import capacity, new_cache
from fastchat_spec.generate.proposers.base import Commit, Proposer
from fastchat_spec.generate.proposers.base import model_tree
from fastchat_spec.generate.tree import Tree
from fastchat_spec.generate.verify import attention_mask, causal_visibility

MIN_PREFIX_CAPACITY = 256  # first size of the Hydra++ prefix cache; it doubles when full


@dataclass(frozen=True)
class DepthStep:
    """The index tensors for filling one tree depth (all on the engine's device)."""

    head: int  # which head fills this depth
    paths: torch.Tensor  # (P, d) node ids from the root to each parent row
    children: torch.Tensor  # (C,) nodes filled at this depth
    rows: torch.Tensor  # (C,) each child's parent row
    ranks: torch.Tensor  # (C,) each child's top-k rank
    top_k: int


def depth_plan(tree: Tree, grounded: bool = True) -> list[DepthStep]:
    """One ``DepthStep`` per tree depth, computed once per generation."""
    steps = []
    parent, rank = tree.parent.tolist(), tree.rank.tolist()
    for d in range(1, tree.max_depth + 1):
        children = tree.nodes_at_depth(d)
        parents = sorted({parent[c] for c in children})
        row_of = {p: r for r, p in enumerate(parents)}
        paths = tree.path_nodes[parents, :d] if grounded else tree.path_nodes[parents[:1], :1]
        rows = [row_of[parent[c]] if grounded else 0 for c in children]
        device = tree.parent.device
        steps.append(DepthStep(
            head=d - 1,
            paths=paths.to(device),
            children=torch.tensor(children, dtype=torch.long, device=device),
            rows=torch.tensor(rows, dtype=torch.long, device=device),
            ranks=torch.tensor([rank[c] for c in children], dtype=torch.long, device=device),
            top_k=tree.max_rank(d),
        ))
    return steps


class HydraProposer(Proposer):
    def __init__(self, heads, base, tree: Tree):
        self.heads = heads
        self.embed = base.get_input_embeddings()
        self.tree = tree
        self.plan = depth_plan(tree, heads.grounded)
        self.feature = None  # (1, H) the heads' input feature at the last committed position
        self.prefix_cache = None  # Hydra++ only: the prefix layer's KV cache for this generation

    @classmethod
    def build(cls, model, device, options):
        return cls(model.drafter, model.base, model_tree(model).to(device))

    def observe(self, commit: Commit) -> None:
        hidden = commit.hidden
        if self.heads.has_prefix:
            hidden = self._advance_prefix(hidden, commit.start)
        self.feature = hidden[-1:]

    def propose(self, root: torch.Tensor) -> torch.Tensor:
        tokens = torch.empty(self.tree.num_nodes, dtype=torch.long, device=root.device)
        tokens[0] = root
        dtype = self.feature.dtype
        for step in self.plan:
            x = self.feature.expand(step.paths.shape[0], -1)  # (P, H)
            if self.heads.grounded:
                path_embeds = self.embed(tokens[step.paths]).to(dtype)  # (P, d, H)
                x = torch.cat([x, path_embeds.flatten(1)], dim=-1)  # (P, (d + 1) * H)
            logits, _ = self.heads.head(step.head, x)  # (P, V)
            top = logits.topk(step.top_k, dim=-1).indices  # (P, K)
            tokens[step.children] = top[step.rows, step.ranks]
        return tokens[1:]

    # -- Hydra++ prefix layer ----------------------------------------------
    def _advance_prefix(self, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """Run the prefix layer over committed hidden states (k, H) at positions start..start+k-1."""
        layer = self.heads.prefix_embeding_layer
        k = hidden.shape[0]
        self._ensure_prefix_room(start + k, hidden)
        device = hidden.device
        begin = torch.tensor(start, device=device)
        positions = begin + torch.arange(k, device=device)
        mask = attention_mask(begin, causal_visibility(k, device), capacity(self.prefix_cache), hidden.dtype)
        out = layer(hidden.view(1, k, -1), positions.view(1, k), attention_mask=mask, cache=self.prefix_cache,
                    cache_position=positions)
        return out[0]

    def _ensure_prefix_room(self, needed: int, like: torch.Tensor) -> None:
        """Allocate the prefix cache, or double it, so that ``needed`` slots fit."""
        have = capacity(self.prefix_cache) if self.prefix_cache is not None else 0
        if needed <= have:
            return
        size = max(MIN_PREFIX_CAPACITY, 2 * needed)
        cache = new_cache(self.heads.prefix_embeding_layer.config, size, like.device, like.dtype)
        if self.prefix_cache is not None:
            for new, old in zip(cache.layers, self.prefix_cache.layers):
                new.keys[:, :, :have].copy_(old.keys)
                new.values[:, :, :have].copy_(old.values)
        self.prefix_cache = cache
