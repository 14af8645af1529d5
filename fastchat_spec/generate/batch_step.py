"""One speculative step for a block of slots: draft, verify, accept, commit, one host read.

Nothing inside a step needs the host, so the step is a pure function of
device buffers with static shapes. For the rows ``first .. first+b`` of the
engine loop's slots it

1. drafts each row's tree below its root (the row's proposer state),
2. verifies all trees in one forward of the base, each row at its own
   positions in its own KV slot (``generate/slots.py``),
3. accepts, per row, the deepest path whose drafts equal the base's argmax
   (greedy rows), or walks the tree by lossless rejection sampling with the
   row's own temperature, top-p and top-k (sampled rows, in the step's
   sampled variant: ``accept.sampled_nodes``),
4. commits that path's KV entries and updates the proposer state (one
   ``Committed`` event, its path padded to the tree's depth + 1),

and leaves what the host needs (accepted depth, the path's tokens, the bonus
token) in one small tensor per row. Rows without an active request run too
(static shapes) but stay where they are. On CUDA each (rows, length) shape
is captured once as a graph and replayed (``cuda_graphs.capture``).
"""
from __future__ import annotations

import os
import time

import torch

from fastchat_spec.generate.accept import greedy_nodes, sampled_nodes
from fastchat_spec.generate.proposers.base import Committed, SlotProposers
from fastchat_spec.generate.row_sampling import RowSampling
from fastchat_spec.generate.slots import SlotStore, commit_rows, rows_mask
from fastchat_spec.generate.verify import compute_dtype, forward_rows


DEVICE_STEP_ENV = "FASTCHAT_SPEC_DEVICE_STEP"  # set to 0 to drive every step from the host
SAMPLED_STEP_ENV = "FASTCHAT_SPEC_SAMPLED_STEP"  # set to 0 to step sampled requests on the host, one at a time
# The parts of ``BatchStep.run``, each a torch.profiler range named ``batch_step.<phase>``
# (``bench/batch_profile.py`` sums the kernels inside each).
PHASES = ("propose", "mask", "verify", "accept", "commit", "observe")
PHASE_PREFIX = "batch_step."


def phase(name: str):
    """A profiler range over one part of the step. It exists while a step runs eagerly (and at capture); a
    graph replay has no host code, so it costs the served steps nothing."""
    return torch.profiler.record_function(PHASE_PREFIX + name)


def supports_device_step(proposer, sampling, acceptance: str = "lossless", sampled_steps: bool = True) -> bool:
    """A proposer with in-place state, no repetition penalty (no per-node history), and greedy decoding or,
    where the loop has sampled steps, lossless sampling (typical acceptance is stepped on the host)."""
    if os.environ.get(DEVICE_STEP_ENV, "1") == "0" or not getattr(proposer, "device_state", False):
        return False
    if sampling.repetition_penalty > 1.0:
        return False
    return sampling.greedy or (acceptance == "lossless" and sampled_steps)


def sampled_steps_enabled() -> bool:
    return os.environ.get(SAMPLED_STEP_ENV, "1") != "0"


class SlotState:
    """Per-slot decoding state on the device, shared by every step shape of one engine loop."""

    def __init__(self, slots: int, max_depth: int, device):
        self.roots = torch.zeros(slots, dtype=torch.long, device=device)  # next token to feed
        self.starts = torch.zeros(slots, dtype=torch.long, device=device)  # tokens in the slot's cache
        self.active = torch.zeros(slots, dtype=torch.bool, device=device)
        self.sampling = RowSampling.zeros(slots, device)  # each slot's temperature, top-p, top-k
        # [accepted depth, tokens of the accepted path (root first, padded), bonus token] per slot
        self.report = torch.zeros(slots, max_depth + 3, dtype=torch.long, device=device)

    # Both write through fill_ on one-element views: on CUDA, ``tensor[slot] = value`` copies the value from
    # the host and waits for the device, which would drain the steps in flight at every join and every end.
    # ``root`` (the prefill's token) is a device tensor: copied on the device, never read by the host here.
    def occupy(self, slot: int, cached: int, root: torch.Tensor, sampling=None) -> None:
        self.starts[slot].fill_(cached)
        self.roots[slot].copy_(root)
        self.active[slot].fill_(True)
        self.sampling.set(slot, sampling)

    def free(self, slot: int) -> None:
        """An empty row keeps drafting at position 0 of its own slot, where it harms nobody."""
        self.active[slot].fill_(False)
        self.starts[slot].fill_(0)
        self.roots[slot].fill_(0)
        self.sampling.set(slot, None)


def emitted_tokens(report: list[int]) -> list[int]:
    """A row's report [depth, path tokens (root first, padded), bonus]: the accepted drafts, then the bonus."""
    return report[2 : 2 + report[0]] + [report[-1]]


def root_token(report: list[int]) -> int:
    """The token the row's step started from: after a prefill, the prompt's first token."""
    return report[1]


class StepReports:
    """Launches batched steps and copies each one's report to the host without waiting for it.

    The engine loop launches step k+1 (and k+2, with two steps ahead)
    before it reads step k, so that the device runs while the host hands
    out the tokens of the step before. At most ``unread`` reports are unread
    at a time: that many host buffers take turns (pinned on CUDA, so the copy
    is asynchronous). On CUDA each step is bracketed by timing events (its
    device time); on the CPU a step has run by the time it is launched, and
    the host clock times it.
    """

    def __init__(self, state: SlotState, device, unread: int):
        self.state = state
        self.cuda = device.type == "cuda"
        self._buffers = [torch.empty(state.report.shape, dtype=torch.long, pin_memory=self.cuda)
                         for _ in range(unread)]
        self._events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                        for _ in range(unread)] if self.cuda else []
        self._next = 0

    def launch(self, step, rows: slice) -> "LaunchedStep":
        """Run ``step`` (a graph replay or an eager ``BatchStep.run``) and start copying its rows' reports."""
        i, self._next = self._next, (self._next + 1) % len(self._buffers)
        buffer = self._buffers[i][rows]
        if not self.cuda:
            t0 = time.perf_counter()
            step()
            buffer.copy_(self.state.report[rows])
            return LaunchedStep(buffer, seconds=time.perf_counter() - t0)
        start, end = self._events[i]
        start.record()
        step()
        buffer.copy_(self.state.report[rows], non_blocking=True)
        end.record()
        return LaunchedStep(buffer, events=(start, end))


class LaunchedStep:
    """A launched step's report, readable once the device has run it."""

    def __init__(self, buffer: torch.Tensor, seconds: float = 0.0, events=None):
        self.buffer, self.seconds, self.events = buffer, seconds, events

    def read(self) -> list[list[int]]:
        """Per row of the step: its report (``emitted_tokens``, ``root_token``). Waits for the device (the GIL
        is released meanwhile)."""
        if self.events is not None:
            start, end = self.events
            end.synchronize()
            self.seconds = start.elapsed_time(end) / 1000
        return self.buffer.tolist()


class BatchStep:
    """The step over slots ``first .. first+count``, attending to positions 0..length.

    ``sampled`` adds the sampling walk for the rows that sample (greedy rows
    keep the greedy rule); the loop runs that variant only when a row of the
    block samples, so greedy steps do not pay for it.

    ``nodes`` caps the tree each row verifies (``Tree.within``): a step of
    many rows verifies the likeliest part of the proposers' tree, so that the
    base's forward stays near the cost of a step of one row. The proposers
    still draft the whole tree; the step reads the part's nodes from it.
    """

    def __init__(self, base, store: SlotStore, state: SlotState, proposers: SlotProposers,
                 first: int, count: int, length: int, decoder=None, nodes: int | None = None, sampled=False):
        tree, source = proposers.tree.within(nodes or proposers.tree.num_nodes)
        self.draft_index = None if tree is proposers.tree else source[1:] - 1  # its nodes among the drafts
        device = tree.parent.device
        self.base, self.state, self.proposers, self.decoder = base, state, proposers, decoder
        self.tree, self.length, self.sampled = tree, length, sampled
        self.rows = slice(first, first + count)
        self.write_at = torch.zeros(count, tree.num_nodes, dtype=torch.long, device=device)
        self.cache = store.rows(first, count, length, self.write_at)
        self.nodes = torch.arange(tree.num_nodes, device=device)
        self.dtype = compute_dtype(base)

    def run(self) -> None:
        """One step; its parts (``PHASES``) are profiler ranges, which ``bench/batch_profile.py`` reads."""
        tree, rows, state = self.tree, self.rows, self.state
        roots, starts, active = state.roots[rows], state.starts[rows], state.active[rows]
        with phase("propose"):
            drafts = self.proposers.propose(rows, roots, starts, self.length)  # (b, N-1): the proposers' whole tree
            if self.draft_index is not None:
                drafts = drafts[:, self.draft_index]
            tokens = torch.cat([roots.unsqueeze(1), drafts], dim=1)  # (b, N) for this step's tree
        with phase("mask"):
            self.write_at.copy_(starts.unsqueeze(1) + self.nodes)
            mask = rows_mask(starts, tree.ancestors, self.length, self.dtype)
        with phase("verify"):
            out = forward_rows(self.base, self.cache, tokens, starts.unsqueeze(1) + tree.depth, mask, self.nodes,
                               self.decoder)
        with phase("accept"):
            target = out.logits.argmax(dim=-1)  # (b, N)
            node = greedy_nodes(tree, tokens, target)
            bonus = target.gather(1, node.unsqueeze(1))
            if self.sampled:
                sampling = state.sampling[rows]
                walked, drawn = sampled_nodes(tree, tokens, out.logits, sampling)
                node = torch.where(sampling.sampled, walked, node)
                bonus = torch.where(sampling.sampled.unsqueeze(1), drawn.unsqueeze(1), bonus)
            node = node * active  # an empty row keeps its root only
            path = tree.path_nodes[node]  # (b, D+1)
            kept = tokens.gather(1, path)
            depth = tree.depth[node]
            state.report[rows] = torch.cat([depth.unsqueeze(1), kept, bonus], dim=1)
        with phase("commit"):
            commit_rows(self.cache, starts, path)
        # The rows move on only after the proposers have read where this step started.
        with phase("observe"):
            self.proposers.observe(rows, Committed(out.hidden, path, depth, kept, starts, out.logits), self.length)
            starts.add_((depth + 1) * active)
            roots.copy_(torch.where(active, bonus[:, 0], roots))
