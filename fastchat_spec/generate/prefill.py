"""A request's prompt forward into its KV slot: graphed per prompt-length bucket on CUDA.

The engine loop admits a request by running the base over its prompt. Run
eagerly, Hugging Face's forward launches a few hundred kernels from Python,
and on a small model that launch cost (milliseconds) stalls every other
request's next step. On CUDA the loop therefore captures one graph per prompt
length bucket at warm-up (``bucket_lengths``): the prompt is padded to its
bucket, run into a one-row scratch cache, and the scratch is copied into the
request's slot, all inside the graph (the slot is an index tensor, so one graph
serves every slot). Padding sits after the prompt, where causal attention keeps
it out of the prompt's rows; its cache entries lie past the request's length,
which every later step masks until it overwrites them.

Only the last prompt position's logits are computed: they give the first token.
Prompts longer than ``GRAPHED_PROMPT_MAX`` tokens run eagerly.
Without graphs (CPU, ``FASTCHAT_SPEC_CUDA_GRAPHS=0``) the prompt runs at its
exact length straight into its slot.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from fastchat_spec.generate.cuda_graphs import capture
from fastchat_spec.generate.kv_cache import round_up
from fastchat_spec.generate.slots import SlotStore, rows_mask
from fastchat_spec.generate.verify import causal_visibility, compute_dtype, forward_rows


GRAPHED_PROMPT_MAX = 4096  # longest prompt (tokens) prefilled through a graph


@dataclass
class Prefilled:
    tokens: torch.Tensor  # (p,) the prompt's ids on the device
    hidden: torch.Tensor  # (p, H) the base's last hidden states over the prompt
    first: int  # the greedy token after the prompt


def bucket_lengths(capacity: int, longest: int = GRAPHED_PROMPT_MAX) -> list[int]:
    """Padded prompt lengths with a graph each: every 64 up to 256, then about x1.5 (padding <= 50%).

    Prompts longer than ``longest`` run eagerly: their forward is long enough
    that launches no longer matter, and a graph's (L, L) mask would not be small.
    """
    top = min(capacity, longest)
    sizes, n = [], 64
    while n < top:
        sizes.append(n)
        n = n + 64 if n < 256 else round_up(n * 3 // 2, 64)
    return sizes + [top]


class SlotPrefill:
    """Prefill of one prompt into a slot of ``store``; graphs per length bucket once ``capture_all`` ran."""

    def __init__(self, base, store: SlotStore, device, decoder=None):
        self.base, self.store, self.device, self.decoder = base, store, device, decoder
        self.dtype = compute_dtype(base)
        self._lengths: list[int] = []  # bucket lengths with a graph, ascending
        self._graphs: list[_GraphedPrefill] = []

    def capture_all(self, pool) -> None:
        """One graph per bucket (call only while no slot holds a request: warm-up runs write slot 0)."""
        lengths = bucket_lengths(self.store.capacity)
        scratch = SlotStore(self.base.config, 1, lengths[-1], self.device, self.store.keys[0].dtype)
        self._graphs = [_GraphedPrefill(self, scratch, length, pool) for length in lengths]
        self._lengths = lengths

    def __call__(self, slot: int, prompt_ids: list[int]) -> Prefilled:
        p = len(prompt_ids)
        tokens = torch.tensor(prompt_ids, dtype=torch.long, device=self.device)
        bucket = bisect.bisect_left(self._lengths, p)  # the shortest graphed length that holds the prompt
        if bucket < len(self._graphs):
            hidden, first = self._graphs[bucket](slot, tokens)
        else:
            hidden, first = self._eager(slot, tokens)
        return Prefilled(tokens, hidden, int(first))

    def _eager(self, slot: int, tokens: torch.Tensor):
        p = tokens.numel()
        positions = torch.arange(p, device=self.device).view(1, p)
        length = round_up(p, 64)
        cache = self.store.rows(slot, 1, length, positions)
        mask = rows_mask(torch.zeros(1, dtype=torch.long, device=self.device),
                         causal_visibility(p, self.device), length, self.dtype)
        out = forward_rows(self.base, cache, tokens.view(1, p), positions, mask, positions[0],
                           logits_at=torch.full((1,), p - 1, device=self.device))
        return out.hidden[0], out.logits[0, 0].argmax()


class _GraphedPrefill:
    """The prefill of prompts up to ``length`` tokens, captured once, replayed for any slot."""

    def __init__(self, prefill: SlotPrefill, scratch: SlotStore, length: int, pool):
        device = prefill.device
        self.tokens = torch.zeros(1, length, dtype=torch.long, device=device)
        self.last = torch.zeros(1, dtype=torch.long, device=device)  # position of the prompt's last token
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        positions = torch.arange(length, device=device).view(1, length)
        mask = rows_mask(torch.zeros(1, dtype=torch.long, device=device), causal_visibility(length, device),
                         length, prefill.dtype)
        cache = scratch.rows(0, 1, length, positions)
        store = prefill.store

        def run():
            out = forward_rows(prefill.base, cache, self.tokens, positions, mask, positions[0], prefill.decoder,
                               logits_at=self.last)
            for layer, (k, v) in zip(cache.layers, zip(store.keys, store.values)):
                k[:, :, :length].index_copy_(0, self.slot, layer.keys)
                v[:, :, :length].index_copy_(0, self.slot, layer.values)
            return out.hidden[0], out.logits[0, 0].argmax()

        self._run = run  # the graph reads the buffers ``run`` holds (positions, mask, cache): they must outlive it
        self.replay, (self.hidden, self.first) = capture(run, device, pool=pool)

    def __call__(self, slot: int, tokens: torch.Tensor):
        p = tokens.numel()
        self.tokens[0, :p].copy_(tokens)  # what lies after it is masked out of the prompt's rows
        self.last.fill_(p - 1)
        self.slot.fill_(slot)
        self.replay()
        return self.hidden[:p], self.first
