"""Medusa proposer: independent heads, one per tree depth."""
from __future__ import annotations

import torch

from fastchat_spec.generate.proposers.base import Committed, Proposer, SlotProposers
from fastchat_spec.generate.proposers.base import last_hidden_buffer
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
        return cls(model.drafter, model.base, cls.tree_for(model, options).to(device))

    def observe(self, event: Committed) -> None:
        self.hidden.copy_(event.last_hidden())

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

    def reset(self, slot: int, event: Committed) -> None:
        self.hidden[slot].copy_(event.last_hidden()[0])

    def propose(self, rows: slice, roots: torch.Tensor, starts: torch.Tensor,
                length: int | None = None) -> torch.Tensor:
        return self.proposer.draft(self.hidden[rows])

    def observe(self, rows: slice, event: Committed, length: int | None = None) -> None:
        self.hidden[rows].copy_(event.last_hidden()[:, 0])

