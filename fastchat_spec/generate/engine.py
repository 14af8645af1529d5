"""One request's host-driven speculative step: propose -> verify -> accept -> commit.

The engine loop (``loop.py``) batches greedy requests into device steps
(``batch_step.py``). A request whose acceptance needs the host (sampling,
typical acceptance, a repetition penalty with per-node histories), whose
proposer keeps host state (Jacobi windows) or that asks for its tokens'
logprobs (read from the verified logits) runs here instead, inside the same
loop: ``Generation`` owns that request's KV cache, proposer and counters, and
each ``step`` verifies its tree in one forward (a CUDA graph on GPU), then
lets ``accept.py`` decide on the host. Every method runs through ``step``;
only the proposer differs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from fastchat_spec.generate import accept
from fastchat_spec.generate.cuda_graphs import borrow_runner, pool_for
from fastchat_spec.generate.kv_cache import commit_path, new_cache
from fastchat_spec.generate.proposers import Committed, proposer_class
from fastchat_spec.generate.sampling import SamplingParams, logits_processor, process_logits, token_logprobs
from fastchat_spec.generate.verify import base_forward, causal_visibility, eager_attention
from fastchat_spec.spec_model import SpecModel

ACCEPTANCE_RULES = ("lossless", "typical")


@dataclass
class Stats:
    steps: int = 0  # base forward passes (the prefill counts as one)
    tokens: int = 0  # tokens generated
    accepted: list = field(default_factory=list)  # draft tokens accepted per verification step
    seconds: dict = field(default_factory=lambda: {"draft": 0.0, "verify": 0.0, "accept": 0.0})

    def as_dict(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "accepted": list(self.accepted)}


class _Clock:
    """Per-phase timing for the benchmark; synchronises the device only when on."""

    def __init__(self, enabled: bool, device: torch.device, seconds: dict):
        self.enabled, self.device, self.seconds = enabled, device, seconds
        self.t = 0.0

    def start(self):
        if self.enabled:
            self._sync()
            self.t = time.perf_counter()

    def lap(self, phase: str):
        if self.enabled:
            self._sync()
            now = time.perf_counter()
            self.seconds[phase] += now - self.t
            self.t = now

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class Generation:
    def __init__(self, model: SpecModel, prompt_ids: list[int], max_new_tokens: int,
                 sampling: SamplingParams, acceptance: str = "lossless", profile: bool = False,
                 options: dict | None = None, method: str | None = None, logprobs: bool = False,
                 prompt_logprobs: bool = False):
        if acceptance not in ACCEPTANCE_RULES:
            raise ValueError(f"unknown acceptance rule {acceptance!r}; use one of {ACCEPTANCE_RULES}")
        self.base = model.base
        self.device = model.device
        opts = {**model.spec.options, **(options or {})}
        # Proposers with their own caches size them from this (the tree adds at most its nodes).
        opts["capacity"] = len(prompt_ids) + max_new_tokens + 1
        method = method or model.spec.method
        self.proposer = proposer_class(method).build(model, self.device, opts)
        self.tree = self.proposer.tree
        self.sampling = sampling
        self.acceptance = acceptance
        self.processor = logits_processor(sampling)
        needed = len(prompt_ids) + max_new_tokens + self.tree.num_nodes + 1
        self.runner = borrow_runner(self.base, needed, self.device, model.dtype)  # CUDA: pooled, with graphs
        self.cache = self.runner.cache if self.runner is not None else new_cache(
            self.base.config, needed, self.device, model.dtype)
        self._prepare_steps(needed)
        self.ids[: len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
        self.prompt_len = len(prompt_ids)
        self.cur = 0  # tokens in the KV cache
        self.root = None  # next token to feed (chosen, not yet in the cache)
        self.stats = Stats()
        self.clock = _Clock(profile, self.device, self.stats.seconds)
        # FastChat's logprobs: the base's log-probability of each token the last prefill or step returned,
        # and of the prompt's tokens after its first (``prompt_logprobs``); None when not asked for.
        self.wants_logprobs, self.wants_prompt_logprobs = logprobs, prompt_logprobs
        self.step_logprobs: list[float] | None = None
        self.prompt_logprobs: list[float] | None = None

    def _prepare_steps(self, needed: int) -> None:
        """Verification and commit (graphed on CUDA), the in-place paths and the committed ids."""
        if self.runner is not None:
            self._verify = self.runner.forward_for(self.tree.ancestors)
            self._commit = self.runner.commit_for(self.tree.path_nodes.shape[1])
        else:
            self._verify = self._eager_verify
            self._commit = commit_path
        self._in_place = [self.tree.in_place(i) for i in range(self.tree.num_nodes)]
        self.ids = torch.zeros(needed, dtype=torch.long, device=self.device)

    # -- the first token -------------------------------------------------
    @torch.inference_mode()
    @eager_attention()
    def prefill(self) -> list[int]:
        p = self.prompt_len
        tokens = self.ids[:p]
        positions = torch.arange(p, device=self.device)
        start = torch.zeros((), dtype=torch.long, device=self.device)
        self.clock.start()
        out = base_forward(self.base, self.cache, tokens, positions, start, causal_visibility(p, self.device))
        self.clock.lap("verify")
        history = tokens.view(1, p) if self.sampling.repetition_penalty > 1.0 else None
        scores = process_logits(self.processor, out.logits[-1:], history)[0]
        if self.sampling.greedy:
            first = scores.argmax()
        else:
            first = torch.multinomial(torch.softmax(scores, dim=-1), 1)[0]
        self.cur = p
        self.root = int(first)
        if self.wants_logprobs:
            self.step_logprobs = token_logprobs(out.logits[-1:], first.view(1))
            if self.wants_prompt_logprobs:
                self.prompt_logprobs = token_logprobs(out.logits[:-1], tokens[1:])
        self.proposer.observe(Committed.prompt(tokens, out.hidden, out.logits))
        self.clock.lap("accept")
        self.stats.steps += 1
        self.stats.tokens += 1
        return [self.root]

    # -- one speculative step ---------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[int]:
        tree = self.tree
        root = torch.tensor(self.root, device=self.device)
        start = torch.tensor(self.cur, device=self.device)
        self.clock.start()
        draft = self.proposer.propose(root)
        tokens = torch.cat([root.view(1), draft])
        self.clock.lap("draft")
        out = self._verify(tokens, start + tree.depth, start)
        self.clock.lap("verify")
        scores = process_logits(self.processor, out.logits, self._history(tokens))
        decision = self._decide(tokens, scores)
        if not self._in_place[decision.node]:
            self._commit(self.cache, start, decision.path)
        kept = decision.path[: len(decision.tokens)]  # root + accepted drafts
        kept_tokens = tokens[kept]
        if self.wants_logprobs:  # row kept[k] of the forward predicted token k of the step
            self.step_logprobs = token_logprobs(out.logits[kept], torch.tensor(decision.tokens, device=self.device))
        self.ids[self.cur : self.cur + len(decision.tokens)] = kept_tokens
        bonus = decision.tokens[-1]
        depth = tree.depth[decision.node : decision.node + 1]  # (1,) accepted drafts, read on the device
        self.proposer.observe(Committed(out.hidden, kept, depth, kept_tokens, start, out.logits))
        self.clock.lap("accept")
        self.cur += len(decision.tokens)
        self.root = bonus
        self.stats.steps += 1
        self.stats.tokens += len(decision.tokens)
        self.stats.accepted.append(len(decision.tokens) - 1)
        return decision.tokens

    def close(self) -> None:
        """Give the pooled cache back (CUDA); safe to call twice."""
        if self.runner is not None:
            pool_for(self.base).release(self.runner)
            self.runner = None

    def _eager_verify(self, tokens, positions, start):
        return base_forward(self.base, self.cache, tokens, positions, start, self.tree.ancestors)

    def _history(self, tokens: torch.Tensor):
        """Ids FastChat's repetition penalty would see at each node: committed ids + the node's path."""
        if self.sampling.repetition_penalty <= 1.0:
            return None
        n = self.tree.num_nodes
        committed = self.ids[: self.cur].view(1, -1).expand(n, -1)
        return torch.cat([committed, tokens[self.tree.path_nodes]], dim=1)

    def _decide(self, tokens: torch.Tensor, scores: torch.Tensor) -> accept.Decision:
        if self.sampling.greedy:
            return accept.accept_greedy(self.tree, tokens, scores)
        if self.acceptance == "typical":
            return accept.accept_typical(self.tree, tokens, scores, self.sampling.temperature)
        return accept.accept_sampling(self.tree, tokens, scores)
