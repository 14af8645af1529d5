"""Hydra / Hydra++ proposer: sequentially dependent heads, expanded depth by depth.

Head d-1 fills tree depth d. It runs once per depth on a batch made of every
node at depth d-1 that has children; each row sees the heads' input feature
(the base's last hidden state, or Hydra++'s prefix layer over it) and the
embeddings of the tokens on that node's path from the root. A child of rank r
takes its parent's r-th most likely token.

Per-generation state lives here, never on the modules: the last feature and,
for Hydra++, the prefix layer's own KV cache, which ``observe`` extends over
every newly committed hidden state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastchat_spec.generate.kv_cache import capacity, new_cache
from fastchat_spec.generate.proposers.base import Committed, PathLayout, Proposer
from fastchat_spec.generate.proposers.base import last_hidden_buffer, state_capacity
from fastchat_spec.generate.tree import Tree
from fastchat_spec.generate.verify import attention_mask



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
    device_state = True  # the feature and the prefix cache are updated in place

    def __init__(self, heads, base, tree: Tree, capacity: int):
        self.heads = heads
        self.embed = base.get_input_embeddings()
        self.tree = tree
        self.plan = depth_plan(tree, heads.grounded)
        self.feature = last_hidden_buffer(base, tree.parent.device)  # the heads' input at the last position
        self.capacity = capacity  # positions of the Hydra++ prefix cache, for the whole request
        self._prefix_cache = None  # allocated on first use, never moved (a captured step reads it)
        self.layout = PathLayout(tree, tree.parent.device)

    @classmethod
    def build(cls, model, device, options):
        tree = cls.tree_for(model, options).to(device)
        return cls(model.drafter, model.base, tree, state_capacity(options, tree))

    def observe(self, event: Committed) -> None:
        if not self.heads.has_prefix:
            self.feature.copy_(event.last_hidden())
            return
        # The prefix layer over every committed row; a padded path's entries past ``depth`` land
        # beyond the new end of its cache, where they stay masked until overwritten.
        offsets, visible = self.layout(event.path.numel())
        out = self._prefix_forward(event.hidden.index_select(0, event.path), event.start, offsets, visible)
        self.feature.copy_(out.index_select(0, event.depth))

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
    def _prefix_forward(self, hidden, begin: torch.Tensor, offsets: torch.Tensor, visible) -> torch.Tensor:
        """The prefix layer over ``hidden`` (k, H) at positions begin + offsets, writing its cache there."""
        k = hidden.shape[0]
        positions = begin + offsets
        cache = self.prefix_cache()
        mask = attention_mask(begin, visible, capacity(cache), hidden.dtype)
        out = self.heads.prefix_embeding_layer(hidden.view(1, k, -1), positions.view(1, k), attention_mask=mask,
                                               cache=cache, cache_position=positions)
        return out[0]

    def prefix_cache(self):
        """The prefix layer's KV cache for this generation (Hydra++ only)."""
        if self._prefix_cache is None:
            layer = self.heads.prefix_embeding_layer
            self._prefix_cache = new_cache(layer.config, self.capacity, self.feature.device, self.feature.dtype)
        return self._prefix_cache
