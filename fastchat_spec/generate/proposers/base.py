"""The proposer interface: what every method plugs into the engine.

A proposer fills the draft tree hanging below the root (the last committed
token) and learns from each commit. It owns all its per-generation state (a
last hidden state, a draft KV cache, a Jacobi window): the model objects it
reads weights from are never written to.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from fastchat_spec.generate.tree import Tree, default_tree


@dataclass
class Commit:
    """What the base model has just committed to its KV cache."""

    tokens: torch.Tensor  # (k,) token ids now in the cache, in order
    hidden: torch.Tensor  # (k, H) base last hidden states at those positions
    start: int  # position of tokens[0]
    next_token: int  # the token chosen after them (the next root; not in the cache yet)
    logits: torch.Tensor  # (T, V) raw logits of the whole forward that produced this commit
    nodes: torch.Tensor  # (k,) rows of ``logits`` that were committed


class Proposer(ABC):
    tree: Tree  # on the engine's device

    @classmethod
    @abstractmethod
    def build(cls, model, device: torch.device, options: dict) -> "Proposer":
        """A fresh proposer for one generation of ``model`` (a ``SpecModel``)."""

    @abstractmethod
    def observe(self, commit: Commit) -> None:
        """Update per-generation state after the prompt or a step was committed."""

    @abstractmethod
    def propose(self, root: torch.Tensor) -> torch.Tensor:
        """Token ids (N-1,) for tree nodes 1..N-1, given the root token (0-d tensor)."""


def model_tree(model) -> Tree:
    """The checkpoint's tree if it ships one, else the default, cut to the head count."""
    heads = model.spec.num_heads
    if model.spec.tree:
        return Tree.from_paths(model.spec.tree).truncated(heads)
    return default_tree(heads)
