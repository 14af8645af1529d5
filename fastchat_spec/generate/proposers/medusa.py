"""Medusa proposer: independent heads, one per tree depth."""
from __future__ import annotations

import torch

from fastchat_spec.generate.proposers.base import Accepted, Commit, Proposer, last_hidden_buffer, model_tree
from fastchat_spec.generate.tree import Tree


class MedusaProposer(Proposer):
    device_state = True  # the last hidden state is updated in place: a device step can capture it

    def __init__(self, drafter, base, tree: Tree):
        self.heads = drafter
        self.lm_head = base.get_output_embeddings()
        self.tree = tree
        self.top_k = max(tree.max_rank(d) for d in range(1, tree.max_depth + 1)) if tree.max_depth else 1
        self.depth_index = (tree.depth[1:] - 1).clamp_min(0)
        self.rank_index = tree.rank[1:]
        self.hidden = last_hidden_buffer(base, tree.parent.device)

    @classmethod
    def build(cls, model, device, options):
        return cls(model.drafter, model.base, model_tree(model).to(device))

    def observe(self, commit: Commit) -> None:
        self.hidden.copy_(commit.hidden[-1:])

    def advance(self, accepted: Accepted) -> None:
        self.hidden.copy_(accepted.hidden.index_select(0, accepted.node))

    def propose(self, root: torch.Tensor) -> torch.Tensor:
        logits = self.heads(self.hidden, self.lm_head)[:, 0]  # (heads, V)
        top = logits.topk(self.top_k, dim=-1).indices  # (heads, K)
        return top[self.depth_index, self.rank_index]

