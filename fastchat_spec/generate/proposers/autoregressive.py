"""No drafts at all: the tree is the root alone, so each step commits one token.

This is our own autoregressive decoder (static cache, CUDA graphs on GPU); the
benchmark compares every method with it to separate the algorithm's gain from
the engine's.
"""
from __future__ import annotations

import torch

from fastchat_spec.generate.proposers.base import Accepted, Commit, Proposer
from fastchat_spec.generate.tree import Tree


class AutoregressiveProposer(Proposer):
    device_state = True  # nothing to keep

    def __init__(self, device):
        self.tree = Tree.from_paths([]).to(device)
        self.empty = torch.zeros(0, dtype=torch.long, device=device)

    @classmethod
    def build(cls, model, device, options):
        return cls(device)

    def observe(self, commit: Commit) -> None:
        pass

    def advance(self, accepted: Accepted) -> None:
        pass

    def propose(self, root: torch.Tensor) -> torch.Tensor:
        return self.empty
