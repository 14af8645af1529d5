"""No drafts at all: the tree is the root alone, so each step commits one token.

This is our own autoregressive decoder (static cache, CUDA graphs on GPU); the
benchmark compares every method with it to separate the algorithm's gain from
the engine's.
"""
from __future__ import annotations

import torch

from fastchat_spec.generate.proposers.base import Committed, Proposer, SlotProposers
from fastchat_spec.generate.tree import Tree


class AutoregressiveProposer(Proposer):
    device_state = True  # nothing to keep

    def __init__(self, device):
        self.tree = Tree.from_paths([]).to(device)
        self.empty = torch.zeros(0, dtype=torch.long, device=device)

    @classmethod
    def tree_for(cls, model, options=None):
        return Tree.from_paths([])

    @classmethod
    def build(cls, model, device, options):
        return cls(device)

    def observe(self, event: Committed) -> None:
        pass

    def propose(self, root: torch.Tensor) -> torch.Tensor:
        return self.empty

    @classmethod
    def for_slots(cls, model, device, slots, capacity):
        return NoDrafts(cls(device))


class NoDrafts(SlotProposers):
    """Every slot drafts nothing: each batched step commits one token per row."""

    def __init__(self, proposer: AutoregressiveProposer):
        self.tree = proposer.tree
        self.empty = proposer.empty

    def reset(self, slot: int, event: Committed) -> None:
        pass

    def propose(self, rows: slice, roots: torch.Tensor, starts: torch.Tensor,
                length: int | None = None) -> torch.Tensor:
        return self.empty.view(1, 0).expand(roots.shape[0], 0)

    def observe(self, rows: slice, event: Committed, length: int | None = None) -> None:
        pass
