"""One greedy speculative step for a block of slots: draft, verify, accept, commit, one host read.

Under greedy decoding nothing inside a step needs the host, so the step is a
pure function of device buffers with static shapes. For the rows ``first ..
first+b`` of the engine loop's slots it

1. drafts each row's tree below its root (the row's proposer state),
2. verifies all trees in one forward of the base, each row at its own
   positions in its own KV slot (``generate/slots.py``),
3. accepts, per row, the deepest path whose drafts equal the base's argmax,
4. commits that path's KV entries and updates the proposer state (one
   ``Committed`` event, its path padded to the tree's depth + 1),

and leaves what the host needs (accepted depth, the path's tokens, the bonus
token) in one small tensor per row. Rows without an active request run too
(static shapes) but stay where they are. On CUDA each (rows, length) shape
is captured once as a graph and replayed (``cuda_graphs.capture``).
"""
from __future__ import annotations

import os

import torch

from fastchat_spec.generate.accept import greedy_nodes
from fastchat_spec.generate.proposers.base import Committed, SlotProposers
from fastchat_spec.generate.slots import SlotStore, commit_rows, rows_mask
from fastchat_spec.generate.verify import compute_dtype, forward_rows


DEVICE_STEP_ENV = "FASTCHAT_SPEC_DEVICE_STEP"  # set to 0 to drive every step from the host


def supports_device_step(proposer, sampling) -> bool:
    """Greedy without a repetition penalty (no per-node history) and a proposer with in-place state."""
    if os.environ.get(DEVICE_STEP_ENV, "1") == "0":
        return False
    return sampling.greedy and sampling.repetition_penalty <= 1.0 and getattr(proposer, "device_state", False)


class SlotState:
    """Per-slot decoding state on the device, shared by every step shape of one engine loop."""

    def __init__(self, slots: int, max_depth: int, device):
        self.roots = torch.zeros(slots, dtype=torch.long, device=device)  # next token to feed
        self.starts = torch.zeros(slots, dtype=torch.long, device=device)  # tokens in the slot's cache
        self.active = torch.zeros(slots, dtype=torch.bool, device=device)
        # [accepted depth, tokens of the accepted path (root first, padded), bonus token] per slot
        self.report = torch.zeros(slots, max_depth + 3, dtype=torch.long, device=device)

    def occupy(self, slot: int, cached: int, root: int) -> None:
        self.starts[slot] = cached
        self.roots[slot] = root
        self.active[slot] = True

    def free(self, slot: int) -> None:
        """An empty row keeps drafting at position 0 of its own slot, where it harms nobody."""
        self.active[slot] = False
        self.starts[slot] = 0
        self.roots[slot] = 0

    def read(self, rows: slice) -> list[list[int]]:
        """Per row: the tokens the last step emitted (accepted drafts, then the bonus); one host sync."""
        emitted = []
        for report in self.report[rows].tolist():
            depth = report[0]
            emitted.append(report[2 : 2 + depth] + [report[-1]])
        return emitted


class BatchStep:
    """The greedy step over slots ``first .. first+count``, attending to positions 0..length."""

    def __init__(self, base, store: SlotStore, state: SlotState, proposers: SlotProposers,
                 first: int, count: int, length: int, decoder=None):
        tree = proposers.tree
        device = tree.parent.device
        self.base, self.state, self.proposers, self.decoder = base, state, proposers, decoder
        self.tree, self.length = tree, length
        self.rows = slice(first, first + count)
        self.write_at = torch.zeros(count, tree.num_nodes, dtype=torch.long, device=device)
        self.cache = store.rows(first, count, length, self.write_at)
        self.nodes = torch.arange(tree.num_nodes, device=device)
        self.dtype = compute_dtype(base)

    def run(self) -> None:
        tree, rows, state = self.tree, self.rows, self.state
        roots, starts, active = state.roots[rows], state.starts[rows], state.active[rows]
        tokens = torch.cat([roots.unsqueeze(1), self.proposers.propose(rows, roots)], dim=1)  # (b, N)
        self.write_at.copy_(starts.unsqueeze(1) + self.nodes)
        mask = rows_mask(starts, tree.ancestors, self.length, self.dtype)
        out = forward_rows(self.base, self.cache, tokens, starts.unsqueeze(1) + tree.depth, mask, self.nodes,
                           self.decoder)
        target = out.logits.argmax(dim=-1)  # (b, N)
        node = greedy_nodes(tree, tokens, target) * active  # an empty row keeps its root only
        path = tree.path_nodes[node]  # (b, D+1)
        commit_rows(self.cache, starts, path)
        kept = tokens.gather(1, path)
        depth = tree.depth[node]
        bonus = target.gather(1, node.unsqueeze(1))
        state.report[rows] = torch.cat([depth.unsqueeze(1), kept, bonus], dim=1)
        self.proposers.observe(rows, Committed(out.hidden, path, depth, kept, starts, out.logits))
        starts.add_((depth + 1) * active)
        roots.copy_(torch.where(active, bonus[:, 0], roots))
