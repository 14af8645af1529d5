"""Hydra / Hydra++ proposer: sequentially dependent heads, expanded depth by depth.

Head d-1 fills tree depth d. It runs once per depth on a batch made of every
node at depth d-1 that has children; each row sees the heads' input feature
(the base's last hidden state, or Hydra++'s prefix layer over it) and the
embeddings of the tokens on that node's path from the root. A child of rank r
takes its parent's r-th most likely token.

Per-generation state lives here, never on the modules: the last feature and,
for Hydra++, the prefix layer's own KV cache, which ``observe`` extends over
every newly committed hidden state. ``HydraSlots`` keeps that state for every
slot of an engine loop in shared tensors, so that a batched step drafts and
updates all its rows in one pass per depth instead of one pass per row; a
request served alone is the one row of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastchat_spec.generate.proposers.base import Committed, OneRow, PathLayout, SlotProposers
from fastchat_spec.generate.proposers.base import last_hidden_buffer, state_capacity
from fastchat_spec.generate.slots import SlotStore
from fastchat_spec.generate.tree import Tree


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


class HydraProposer(OneRow):
    """One request's Hydra state: the first and only row of a ``HydraSlots``."""

    def __init__(self, heads, base, tree: Tree, capacity: int):
        super().__init__(HydraSlots(heads, base, tree, capacity, slots=1), tree.parent.device)

    @classmethod
    def build(cls, model, device, options):
        tree = cls.tree_for(model, options).to(device)
        return cls(model.drafter, model.base, tree, state_capacity(options, tree))

    @classmethod
    def for_slots(cls, model, device, slots, capacity):
        tree = cls.tree_for(model).to(device)
        return HydraSlots(model.drafter, model.base, tree, state_capacity({"capacity": capacity}, tree), slots)

    @property
    def feature(self) -> torch.Tensor:
        """(1, H): the heads' input at the last committed position."""
        return self.slots.feature


class HydraSlots(SlotProposers):
    """The Hydra state of every slot of an engine loop, in shared tensors: the heads' input feature (slots, H)
    and, for Hydra++, the prefix layer's KV cache (one row of a ``SlotStore`` per slot). A batched step drafts
    all its rows with one head call per depth and extends their prefix caches with one prefix-layer call."""

    def __init__(self, heads, base, tree: Tree, capacity: int, slots: int):
        self.heads = heads
        self.embed = base.get_input_embeddings()
        self.tree = tree
        self.plan = depth_plan(tree, heads.grounded)
        self.layout = PathLayout(tree, tree.parent.device)
        self.feature = last_hidden_buffer(base, tree.parent.device, slots)  # the heads' input at each slot's end
        layer = heads.prefix_embeding_layer
        self.store = None if layer is None else SlotStore(layer.config, slots, capacity, self.feature.device,
                                                          self.feature.dtype)

    def reset(self, slot: int, event: Committed) -> None:
        self.observe(slice(slot, slot + 1), event.as_one_row())

    def observe(self, rows: slice, event: Committed, length: int | None = None) -> None:
        if self.store is None:
            self.feature[rows] = event.last_hidden()[:, 0]
            return
        # The prefix layer over every committed row; a padded path's entries past ``depth`` land
        # beyond the new end of its cache, where they stay masked until overwritten.
        out = self._prefix_forward(rows, event.path_hidden(), event.start, length or self.store.capacity)
        self.feature[rows] = torch.take_along_dim(out, event.depth.view(-1, 1, 1), dim=1)[:, 0]

    def _prefix_forward(self, rows: slice, hidden: torch.Tensor, begin: torch.Tensor, length: int) -> torch.Tensor:
        """The prefix layer over ``hidden`` (b, k, H), row r at positions begin[r] + 0..k-1 of its slot's cache
        (of which it reads the first ``length``), each seeing its slot's committed positions and the block
        causally; writes those caches."""
        positions, offsets, cache, mask = self.layout.place(self.store, rows, begin, hidden.shape[1], length,
                                                            hidden.dtype)
        return self.heads.prefix_embeding_layer(hidden, positions, attention_mask=mask, cache=cache,
                                                cache_position=offsets)

    def propose(self, rows: slice, roots: torch.Tensor, starts: torch.Tensor,
                length: int | None = None) -> torch.Tensor:
        """(b, N-1) drafts below each row's root (b,)."""
        feature = self.feature[rows]
        b = feature.shape[0]
        tokens = torch.empty(b, self.tree.num_nodes, dtype=torch.long, device=roots.device)
        tokens[:, 0] = roots
        for step in self.plan:
            x = feature.unsqueeze(1).expand(b, step.paths.shape[0], -1)  # (b, P, H)
            if self.heads.grounded:
                path_embeds = self.embed(tokens[:, step.paths]).to(feature.dtype)  # (b, P, d, H)
                x = torch.cat([x, path_embeds.flatten(2)], dim=-1)  # (b, P, (d + 1) * H)
            logits, _ = self.heads.head(step.head, x)  # (b, P, V)
            top = logits.topk(step.top_k, dim=-1).indices  # (b, P, K)
            tokens[:, step.children] = top[:, step.rows, step.ranks]
        return tokens[:, 1:]
