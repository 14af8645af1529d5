"""A whole greedy step on the device: draft, verify, accept, commit, then one host read.

Under greedy decoding nothing inside a step needs the host: the proposer's
draft, the base forward over the tree, the argmax acceptance, the KV commit of
the accepted path and the proposer's update are tensor operations of static
shape. ``DeviceStep`` runs them in that order and leaves what the host needs
(accepted depth, the path's tokens, the bonus token) in one small tensor. On
CUDA the whole step is captured once as a graph and replayed (``GraphedStep``),
so a step costs one replay and one read of a few integers.

Proposers opt in with ``device_state = True``: they keep their per-generation
state in tensors that are updated in place (``observe`` after the prompt,
``advance`` after each step), so a graph captured over them stays valid.
"""
from __future__ import annotations

import os

import torch

from fastchat_spec.generate.accept import deepest_valid
from fastchat_spec.generate.kv_cache import capacity, commit_path
from fastchat_spec.generate.proposers.base import Accepted
from fastchat_spec.generate.verify import base_forward


DEVICE_STEP_ENV = "FASTCHAT_SPEC_DEVICE_STEP"  # set to 0 to drive every step from the host


def supports_device_step(proposer, sampling) -> bool:
    """Greedy without a repetition penalty (no per-node history) and a proposer with in-place state."""
    if os.environ.get(DEVICE_STEP_ENV, "1") == "0":
        return False
    return sampling.greedy and sampling.repetition_penalty <= 1.0 and getattr(proposer, "device_state", False)


class DeviceStep:
    """One generation's greedy step as a pure function of device buffers."""

    def __init__(self, base, cache, proposer, decoder=None):
        self.base, self.cache, self.proposer, self.decoder = base, cache, proposer, decoder
        self.tree = tree = proposer.tree
        device = tree.parent.device
        self.root = torch.zeros(1, dtype=torch.long, device=device)  # next token to feed
        self.start = torch.zeros((), dtype=torch.long, device=device)  # tokens in the KV cache
        # [accepted depth, tokens on the accepted path (root first, padded), bonus token]
        self.report = torch.zeros(tree.max_depth + 3, dtype=torch.long, device=device)
        self.ids = torch.zeros(capacity(cache), dtype=torch.long, device=device)  # every token in the cache
        self.offsets = torch.arange(tree.max_depth + 1, device=device)
        self.is_root = tree.depth == 0

    def reset(self, cached: int, root: int) -> None:
        """After the prefill: ``cached`` tokens are in the cache and ``root`` comes next."""
        self.start.fill_(cached)
        self.root.fill_(root)

    def run(self) -> None:
        tree = self.tree
        tokens = torch.cat([self.root, self.proposer.propose(self.root[0])])
        out = base_forward(self.base, self.cache, tokens, self.start + tree.depth, self.start, tree.ancestors,
                           self.decoder)
        target = out.logits.argmax(dim=-1)
        ok = (tokens == target[tree.parent]) | self.is_root
        node = deepest_valid(tree, ok).view(1)  # (1,): index_select, never a 0-d index (a host sync)
        path = tree.path_nodes.index_select(0, node)[0]
        commit_path(self.cache, self.start, path)
        kept = tokens.index_select(0, path)
        self.ids.index_copy_(0, self.start + self.offsets, kept)
        depth, bonus = tree.depth.index_select(0, node), target.index_select(0, node)
        self.report.copy_(torch.cat([depth, kept, bonus]))
        self.proposer.advance(Accepted(out.hidden, node, path, kept, depth, self.start))
        self.start.add_(depth[0] + 1)
        self.root.copy_(bonus)

    def read(self) -> list[int]:
        """The tokens this step emitted: accepted drafts, then the bonus token (one host sync)."""
        report = self.report.tolist()
        depth = report[0]
        return report[2 : 2 + depth] + [report[-1]]


class GraphedStep:
    """A ``DeviceStep`` captured as one CUDA graph (its buffers are the graph's inputs and outputs)."""

    def __init__(self, step: DeviceStep):
        self.step = step
        device = step.root.device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm up (and compile) outside the graph; the next prefill resets the state
                step.run()
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            step.run()

    @property
    def proposer(self):
        return self.step.proposer

    @property
    def ids(self) -> torch.Tensor:
        return self.step.ids

    def reset(self, cached: int, root: int) -> None:
        self.step.reset(cached, root)

    def run(self) -> None:
        self.graph.replay()

    def read(self) -> list[int]:
        return self.step.read()
