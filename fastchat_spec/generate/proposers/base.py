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


@dataclass
class Accepted:
    """What a device step accepted, as static-shape device tensors (see ``generate/batch_step.py``)."""

    hidden: torch.Tensor  # (N, H) base last hidden states at every tree node
    node: torch.Tensor  # (1,) deepest accepted node
    path: torch.Tensor  # (D+1,) nodes from the root to ``node``, padded with ``node``
    tokens: torch.Tensor  # (D+1,) their tokens (the root first); the first depth+1 are now in the cache
    depth: torch.Tensor  # (1,) accepted drafts; depth + 1 tokens were committed at positions start..
    start: torch.Tensor  # () position of the root (tokens in the cache before this step)

    def row(self, i: int) -> "Accepted":
        """Row ``i`` of a batched step's ``Accepted`` (fields with a leading batch dim), as one request's."""
        return Accepted(self.hidden[i], self.node[i : i + 1], self.path[i], self.tokens[i],
                        self.depth[i : i + 1], self.start[i])


class Proposer(ABC):
    tree: Tree  # on the engine's device
    # True when the state lives in tensors updated in place by ``observe`` and ``advance``, so the
    # whole greedy step can run on the device (``generate/batch_step.py``).
    device_state: bool = False

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

    def advance(self, accepted: Accepted) -> None:
        """Device-step proposers: a step's path was accepted and committed; update the state in place
        (static shapes, no host reads: this runs inside the step's CUDA graph)."""
        raise NotImplementedError

    @classmethod
    def for_slots(cls, model, device: torch.device, slots: int, capacity: int) -> "SlotProposers":
        """Proposer state for every KV slot of an engine loop (see ``SlotProposers``).

        The default keeps one single-request proposer per slot; methods whose
        state is a plain tensor override this with one batched proposer.
        """
        return EachSlot([cls.build(model, device, {"capacity": capacity}) for _ in range(slots)])


class SlotProposers(ABC):
    """Device-step proposer state for all slots of an engine loop, drafted and advanced row-batched.

    ``rows`` is the slice of slots a batched step covers; tensors passed in and
    returned have one leading row per slot of it. Rows that hold no request
    are drafted and advanced too (static shapes); their state is reset when a
    request takes the slot.
    """

    tree: Tree

    @abstractmethod
    def reset(self, slot: int, commit: Commit) -> None:
        """A request's prompt was committed in ``slot``."""

    @abstractmethod
    def propose(self, rows: slice, roots: torch.Tensor) -> torch.Tensor:
        """(b, N-1) draft tokens for tree nodes 1..N-1 below each row's root (b,)."""

    @abstractmethod
    def advance(self, rows: slice, accepted: Accepted) -> None:
        """A batched step accepted ``accepted`` (batched fields) for ``rows``."""


class EachSlot(SlotProposers):
    """One single-request proposer per slot, called row by row (same state handling as alone)."""

    def __init__(self, proposers: list[Proposer]):
        self.proposers = proposers
        self.tree = proposers[0].tree

    def reset(self, slot: int, commit: Commit) -> None:
        self.proposers[slot].observe(commit)

    def propose(self, rows: slice, roots: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.proposers[slot].propose(roots[i])
                            for i, slot in enumerate(range(rows.start, rows.stop))])

    def advance(self, rows: slice, accepted: Accepted) -> None:
        for i, slot in enumerate(range(rows.start, rows.stop)):
            self.proposers[slot].advance(accepted.row(i))


def last_hidden_buffer(base, device) -> torch.Tensor:
    """(1, H) zeros for the base's last hidden state, which ``observe``/``advance`` overwrite in place."""
    from fastchat_spec.generate.verify import compute_dtype

    return torch.zeros(1, base.config.hidden_size, dtype=compute_dtype(base), device=device)


def state_capacity(options: dict, tree: Tree) -> int:
    """Positions a proposer's own cache needs: the engine's cache capacity for this request (same bucket).

    Sized once at build, so the cache never moves and a captured device step stays valid.
    """
    from fastchat_spec.generate.kv_cache import bucket

    return bucket(options.get("capacity", 0) + tree.num_nodes)


def model_tree(model) -> Tree:
    """The checkpoint's tree if it ships one, else the default, cut to the head count."""
    heads = model.spec.num_heads
    if model.spec.tree:
        return Tree.from_paths(model.spec.tree).truncated(heads)
    return default_tree(heads)
