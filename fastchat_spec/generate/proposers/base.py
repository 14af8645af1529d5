"""The proposer interface: what every method plugs into the engine.

A proposer fills the draft tree hanging below the root (the last committed
token) and learns from each commit through one event, ``Committed``, which
every driver builds the same way: the prefill, the host-driven step
(``generate/engine.py``) and the batched device step (``generate/batch_step.py``).
It owns all its per-generation state (a last hidden state, a draft KV cache,
a Jacobi window): the model objects it reads weights from are never written to.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from fastchat_spec.generate.slots import SlotStore, rows_mask
from fastchat_spec.generate.tree import Tree, default_tree
from fastchat_spec.generate.verify import causal_visibility, compute_dtype


@dataclass
class Committed:
    """What the base has just committed to its KV cache, out of one forward over rows 0..T-1.

    The rows are the prompt's positions (prefill) or the tree's nodes (a step).
    ``path`` lists the committed rows in order; a device step pads it to the
    tree's depth + 1 with its last entry, so ``path[-1]`` is always the last
    committed row and the shapes stay static. A batched step's event has one
    leading row per slot on every field (``row`` takes one out).
    """

    hidden: torch.Tensor  # (T, H) base last hidden states at every row of the forward
    path: torch.Tensor  # (P,) committed rows in order, padded with the last one (P >= depth + 1)
    depth: torch.Tensor  # (1,) committed rows minus one: the tokens of path[: depth + 1] are now in the cache
    tokens: torch.Tensor  # (P,) the tokens at ``path`` (padded alike)
    start: torch.Tensor  # () position of path[0]'s token
    logits: torch.Tensor | None = None  # (T, V) raw logits of the forward (Jacobi reads them)

    @classmethod
    def prompt(cls, tokens: torch.Tensor, hidden: torch.Tensor, logits: torch.Tensor | None) -> "Committed":
        """The prefill's event: all p prompt tokens committed at positions 0..p-1."""
        p, device = tokens.numel(), tokens.device
        return cls(hidden, torch.arange(p, device=device), torch.full((1,), p - 1, dtype=torch.long, device=device),
                   tokens, torch.zeros((), dtype=torch.long, device=device), logits)

    def row(self, i: int) -> "Committed":
        """Row ``i`` of a batched step's event, as one request's."""
        return Committed(self.hidden[i], self.path[i], self.depth[i : i + 1], self.tokens[i], self.start[i],
                         None if self.logits is None else self.logits[i])

    def as_one_row(self) -> "Committed":
        """This request's event as a batched step's event of one row (``row``'s inverse)."""
        return Committed(self.hidden.unsqueeze(0), self.path.unsqueeze(0), self.depth.view(1),
                         self.tokens.unsqueeze(0), self.start.view(1),
                         None if self.logits is None else self.logits.unsqueeze(0))

    def last_hidden(self) -> torch.Tensor:
        """The base's hidden state at the last committed row: (1, H), batched (b, 1, H)."""
        return torch.take_along_dim(self.hidden, self.path[..., -1:, None], dim=-2)

    def path_hidden(self) -> torch.Tensor:
        """The base's hidden states at the committed rows, in order: (P, H), batched (b, P, H); a padded
        path repeats its last row."""
        return torch.take_along_dim(self.hidden, self.path[..., None], dim=-2)


class Proposer(ABC):
    tree: Tree  # on the engine's device
    # True when ``observe`` updates tensors in place, with static shapes for a padded path and no
    # host reads, so the whole greedy step can run on the device (``generate/batch_step.py``).
    device_state: bool = False

    @classmethod
    def tree_for(cls, model, options: dict | None = None) -> Tree:
        """The tree this method drafts for ``model`` (on the CPU), without building a proposer."""
        return model_tree(model)

    @classmethod
    @abstractmethod
    def build(cls, model, device: torch.device, options: dict) -> "Proposer":
        """A fresh proposer for one generation of ``model`` (a ``SpecModel``)."""

    @abstractmethod
    def observe(self, event: Committed) -> None:
        """Update per-generation state after the prompt or a step was committed.

        With ``device_state`` this runs inside the batched step's CUDA graph:
        in place, no host reads, and no shape that depends on the event's values.
        """

    @abstractmethod
    def propose(self, root: torch.Tensor) -> torch.Tensor:
        """Token ids (N-1,) for tree nodes 1..N-1, given the root token (0-d tensor)."""

    @classmethod
    def for_slots(cls, model, device: torch.device, slots: int, capacity: int) -> "SlotProposers":
        """Proposer state for every KV slot of an engine loop (see ``SlotProposers``).

        The default keeps one single-request proposer per slot; methods whose
        state is a plain tensor override this with one batched proposer.
        """
        return EachSlot([cls.build(model, device, {"capacity": capacity}) for _ in range(slots)])


class SlotProposers(ABC):
    """Device-step proposer state for all slots of an engine loop, drafted and updated row-batched.

    ``rows`` is the slice of slots a batched step covers; tensors passed in and
    returned have one leading row per slot of it. Rows that hold no request
    are drafted and updated too (static shapes); their state is reset when a
    request takes the slot. ``starts`` (b,) are the rows' root positions, where
    the step writes each tree (the step's own, so a proposer keeps no copy);
    ``length`` is the positions the step attends to (its length bucket, past
    every row's tree and path): a proposer with a cache of its own attends to
    no more of it; None: the whole slot.
    """

    tree: Tree

    @abstractmethod
    def reset(self, slot: int, event: Committed) -> None:
        """A request's prompt was committed in ``slot`` (``Committed.prompt``)."""

    @abstractmethod
    def propose(self, rows: slice, roots: torch.Tensor, starts: torch.Tensor,
                length: int | None = None) -> torch.Tensor:
        """(b, N-1) draft tokens for tree nodes 1..N-1 below each row's root (b,)."""

    @abstractmethod
    def observe(self, rows: slice, event: Committed, length: int | None = None) -> None:
        """A batched step committed ``event`` (one leading row per slot of ``rows``)."""


class EachSlot(SlotProposers):
    """One single-request proposer per slot, called row by row (same state handling as alone)."""

    def __init__(self, proposers: list[Proposer]):
        self.proposers = proposers
        self.tree = proposers[0].tree

    def reset(self, slot: int, event: Committed) -> None:
        self.proposers[slot].observe(event)

    def propose(self, rows: slice, roots: torch.Tensor, starts: torch.Tensor,
                length: int | None = None) -> torch.Tensor:
        return torch.stack([self.proposers[slot].propose(roots[i])
                            for i, slot in enumerate(range(rows.start, rows.stop))])

    def observe(self, rows: slice, event: Committed, length: int | None = None) -> None:
        for i, slot in enumerate(range(rows.start, rows.stop)):
            self.proposers[slot].observe(event.row(i))


class OneRow(Proposer):
    """One request's proposer kept as the only row of a ``SlotProposers``: one implementation drafts for a
    request alone (the host-driven step) and for the rows of a batched step. It tracks its root's position,
    which a batched step passes in."""

    device_state = True  # the rows' state is updated in place

    def __init__(self, slots: SlotProposers, device: torch.device):
        self.slots, self.tree = slots, slots.tree
        self.one = slice(0, 1)
        self.end = torch.zeros(1, dtype=torch.long, device=device)  # the position after the last committed token

    def observe(self, event: Committed) -> None:
        self.slots.observe(self.one, event.as_one_row())
        self.end.copy_(event.start + event.depth + 1)

    def propose(self, root: torch.Tensor) -> torch.Tensor:
        return self.slots.propose(self.one, root.view(1), self.end)[0]


class PathLayout:
    """Offsets from ``start`` and causal visibility for k committed rows, for a draft cache's own forward.

    Those for a device step's padded path (the tree's depth + 1) are made
    once, so the captured step allocates nothing; other lengths (a prompt, a
    host step's unpadded path) are made on the fly.
    """

    def __init__(self, tree: Tree, device: torch.device):
        self.device = device
        padded = tree.max_depth + 1
        self.padded = (torch.arange(padded, device=device), causal_visibility(padded, device))

    def __call__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k == self.padded[0].numel():
            return self.padded
        return torch.arange(k, device=self.device), causal_visibility(k, self.device)

    def place(self, store: SlotStore, rows: slice, start: torch.Tensor, k: int, length: int, dtype: torch.dtype):
        """Where a draft cache's own forward writes k committed rows of each slot of ``rows``: (positions (b, k)
        from each row's ``start``, the offsets 0..k-1, the cache over the slots' first ``length`` positions,
        and the mask by which each row sees its slot's committed positions and the block causally)."""
        offsets, visible = self(k)
        positions = start.unsqueeze(1) + offsets
        cache = store.rows(rows.start, start.shape[0], length, positions)
        return positions, offsets, cache, rows_mask(start, visible, length, dtype)


def last_hidden_buffer(base, device, rows: int = 1) -> torch.Tensor:
    """(rows, H) zeros for the base's last hidden state (one row per slot), which ``observe`` overwrites in place."""
    return torch.zeros(rows, base.config.hidden_size, dtype=compute_dtype(base), device=device)


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
