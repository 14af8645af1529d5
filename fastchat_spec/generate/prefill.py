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

By default the prompt's forward runs on a stream of its own, beside the step
in flight: on a small model both are launch-bound and share the device's idle
SMs, so a request joining stalls the others less (+4% tokens per second at 16
clients on an H100). Only the copy into the slot then waits for the step in
flight (on the loop's stream), because an empty row of that step writes into
the free slot (``SlotState.free``). ``FASTCHAT_SPEC_PREFILL_STREAM=0`` runs the
forward after the step instead, on the loop's stream. The prompt graphs keep
their memory apart from the steps' graphs, and are captured on the prefill
stream (``side_stream``: never the steps' capture stream), so that their GEMMs
get a cuBLAS workspace of their own (``capture``). Until 2026-12-07 both were
captured on one stream and shared one workspace; with prompt forwards beside
the steps, ``scripts/gpu_check.py`` then found wrong float32 greedy tokens in
1 to 4 of 16 prompts on an H100, different ones in each run. With the separate
capture it passed twice on an H100 (fifteenth session, BENCHMARKS.md section 7).

Only the last prompt position's logits are computed: they give the first token
(``row_sampling.first_token``), which stays on the device: the loop does not wait for the
prompt's forward to read it, but takes it from the first step's report.
Prompts longer than ``GRAPHED_PROMPT_MAX`` tokens run eagerly.
Without graphs (CPU, ``FASTCHAT_SPEC_CUDA_GRAPHS=0``) the prompt runs at its
exact length straight into its slot.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

import torch

from fastchat_spec.generate.cuda_graphs import capture, side_stream
from fastchat_spec.generate.kv_cache import round_up
from fastchat_spec.generate.slots import SlotStore, rows_mask
from fastchat_spec.generate.verify import causal_visibility, compute_dtype, forward_rows


GRAPHED_PROMPT_MAX = 4096  # longest prompt (tokens) prefilled through a graph
PREFILL_STREAM_ENV = "FASTCHAT_SPEC_PREFILL_STREAM"  # 1: graphed prefills run beside the step in flight


@dataclass
class Prefilled:
    tokens: torch.Tensor  # (p,) the prompt's ids on the device
    hidden: torch.Tensor  # (p, H) the base's last hidden states over the prompt
    logits: torch.Tensor  # (V,) the base's logits after the prompt, on the device (reading them waits for the forward)


def prefill_stream() -> bool:
    """Whether graphed prefills run on a stream of their own (``FASTCHAT_SPEC_PREFILL_STREAM``: 1 by default, or 0)."""
    env = os.environ.get(PREFILL_STREAM_ENV, "").strip()
    if env not in ("", "0", "1"):
        raise ValueError(f"{PREFILL_STREAM_ENV} must be 1 (prompt forwards beside the step in flight) or 0 "
                         f"(after it), got {env!r}")
    return env != "0"


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
        # The prompt forwards' own CUDA stream (None: the loop's); the setting is checked when the loop is built.
        self.stream = side_stream(device) if prefill_stream() and device.type == "cuda" else None
        self._scratch_free = None  # CUDA event: the last graphed prefill's scratch has been read

    def capture_all(self) -> None:
        """One graph per bucket (call only while no slot holds a request: warm-up runs write slot 0)."""
        lengths = bucket_lengths(self.store.capacity)
        scratch = SlotStore(self.base.config, 1, lengths[-1], self.device, self.store.keys[0].dtype)
        pool = torch.cuda.graph_pool_handle()  # apart from the steps' pool: a prefill may run beside a step
        self._graphs = [_GraphedPrefill(self, scratch, length, pool) for length in lengths]
        self._lengths = lengths

    def __call__(self, slot: int, prompt_ids: list[int]) -> Prefilled:
        bucket = bisect.bisect_left(self._lengths, len(prompt_ids))  # the shortest graphed length that holds it
        if bucket < len(self._graphs):
            return self._graphed(self._graphs[bucket], slot, prompt_ids)
        tokens = torch.tensor(prompt_ids, dtype=torch.long, device=self.device)
        hidden, logits = self._eager(slot, tokens)
        return Prefilled(tokens, hidden, logits)

    def _graphed(self, graph: "_GraphedPrefill", slot: int, prompt_ids: list[int]) -> Prefilled:
        """The prompt's forward on the prefill stream, then its copy into ``slot`` on the loop's stream.

        Nothing here waits for the device: the loop's stream waits for the
        forward before the copy, so every later step sees the slot filled. The
        scratch cache and the graph's outputs are read on the loop's stream, so
        the next prefill waits for that read.
        """
        p = len(prompt_ids)
        loop_stream = torch.cuda.current_stream(self.device)
        stream = self.stream if self.stream is not None else loop_stream
        with torch.cuda.stream(stream):
            if self._scratch_free is not None:
                stream.wait_event(self._scratch_free)
            tokens = torch.tensor(prompt_ids, dtype=torch.long, device=self.device)
            graph.forward(tokens)
        loop_stream.wait_stream(stream)
        tokens.record_stream(loop_stream)  # made on the prefill stream, read later on the loop's
        graph.write_slot(slot)
        hidden = graph.hidden[:p].clone()  # the next prefill of this bucket overwrites graph.hidden
        logits = graph.logits.clone()
        self._scratch_free = torch.cuda.Event()
        self._scratch_free.record(loop_stream)
        return Prefilled(tokens, hidden, logits)

    def _eager(self, slot: int, tokens: torch.Tensor):
        p = tokens.numel()
        positions = torch.arange(p, device=self.device).view(1, p)
        length = round_up(p, 64)
        cache = self.store.rows(slot, 1, length, positions)
        mask = rows_mask(torch.zeros(1, dtype=torch.long, device=self.device),
                         causal_visibility(p, self.device), length, self.dtype)
        out = forward_rows(self.base, cache, tokens.view(1, p), positions, mask, positions[0],
                           logits_at=torch.full((1,), p - 1, device=self.device))
        return out.hidden[0], out.logits[0, 0]


class _GraphedPrefill:
    """The prefill of prompts up to ``length`` tokens, captured once: the forward into a one-row scratch
    cache, and the scratch's copy into a slot (any slot: the slot is an index tensor)."""

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

        def forward():
            out = forward_rows(prefill.base, cache, self.tokens, positions, mask, positions[0], prefill.decoder,
                               logits_at=self.last)
            return out.hidden[0], out.logits[0, 0]

        def write_slot():
            for layer, (k, v) in zip(cache.layers, zip(store.keys, store.values)):
                k[:, :, :length].index_copy_(0, self.slot, layer.keys)
                v[:, :, :length].index_copy_(0, self.slot, layer.values)

        # The graphs read the buffers these closures hold (positions, mask, cache): they must outlive them.
        self._runs = (forward, write_slot)
        # Captured on the stream it replays on: its own cuBLAS workspace, apart from the steps' (``capture``).
        self._forward, (self.hidden, self.logits) = capture(forward, device, pool=pool, stream=prefill.stream)
        self._write_slot, _ = capture(write_slot, device, warmups=1, pool=pool)

    def forward(self, tokens: torch.Tensor) -> None:
        p = tokens.numel()
        self.tokens[0, :p].copy_(tokens)  # what lies after it is masked out of the prompt's rows
        self.last.fill_(p - 1)
        self._forward()

    def write_slot(self, slot: int) -> None:
        self.slot.fill_(slot)
        self._write_slot()
