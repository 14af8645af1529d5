"""Medusa proposer: independent heads, one per tree depth."""
from __future__ import annotations

import torch

from fastchat_spec.generate.proposers.base import Accepted, Commit, Proposer, SlotProposers
from fastchat_spec.generate.proposers.base import last_hidden_buffer, model_tree
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
        return self.draft(self.hidden)[0]

    def draft(self, hidden: torch.Tensor) -> torch.Tensor:
        """(b, H) last hidden states -> (b, N-1) tree tokens: node i takes its depth's rank-th candidate."""
        logits = self.heads(hidden, self.lm_head)  # (heads, b, V)
        top = logits.topk(self.top_k, dim=-1).indices  # (heads, b, K)
        return top[self.depth_index, :, self.rank_index].transpose(0, 1)

    @classmethod
    def for_slots(cls, model, device, slots, capacity):
        return MedusaSlots(cls.build(model, device, {}), slots)


class MedusaSlots(SlotProposers):
    """Every slot's last hidden state in one (slots, H) tensor: the heads draft all rows in one call."""

    def __init__(self, proposer: MedusaProposer, slots: int):
        self.proposer = proposer
        self.tree = proposer.tree
        self.hidden = proposer.hidden.new_zeros(slots, proposer.hidden.shape[1])

    def reset(self, slot: int, commit: Commit) -> None:
        self.hidden[slot].copy_(commit.hidden[-1])

    def propose(self, rows: slice, roots: torch.Tensor) -> torch.Tensor:
        return self.proposer.draft(self.hidden[rows])

    def advance(self, rows: slice, accepted: Accepted) -> None:
        b = accepted.node.shape[0]
        picked = accepted.hidden[torch.arange(b, device=accepted.node.device), accepted.node]  # (b, H)
        self.hidden[rows].copy_(picked)

