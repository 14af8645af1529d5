"""End-to-end decoding speed: our method against FastChat's stock decoder and our own AR decoder.

All three run in the same process on the same loaded base, prompt by prompt,
so every ratio is taken side by side; the summary quotes medians of the
per-prompt ratios.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch

from fastchat_spec.generate.engine import Generation
from fastchat_spec.generate.sampling import SamplingParams


@dataclass
class Run:
    tokens: int  # tokens generated
    seconds: float  # wall time including the prefill
    steps: int  # base forward passes
    text_ids: list = field(default_factory=list)
    split: dict = field(default_factory=dict)  # seconds per phase (profiled runs only)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def tau(self) -> float:
        """Tokens per verification step (the prefill's token and step excluded)."""
        return (self.tokens - 1) / (self.steps - 1) if self.steps > 1 else 1.0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(model, prompt_ids: list[int], max_new_tokens: int, temperature: float, eos: int,
               method: str | None = None, profile: bool = False) -> Run:
    """Decode with our engine until max_new_tokens or eos; ``method="ar"`` is our AR decoder."""
    sampling = SamplingParams(temperature, 1.0, -1, 1.0)
    gen = Generation(model, prompt_ids, max_new_tokens, sampling, profile=profile, method=method)
    try:
        _sync(model.device)
        t0 = time.perf_counter()
        out = gen.prefill()
        while len(out) < max_new_tokens and eos not in out:
            out += gen.step()
        _sync(model.device)
        seconds = time.perf_counter() - t0
    finally:
        gen.close()
    out = out[:max_new_tokens]
    if eos in out:
        out = out[: out.index(eos) + 1]
    return Run(len(out), seconds, gen.stats.steps, out, dict(gen.stats.seconds) if profile else {})


def run_fastchat(base, tokenizer, prompt: str, max_new_tokens: int, temperature: float,
                 context_len: int) -> Run:
    """FastChat's own generate_stream on the base, as its worker runs it."""
    from fastchat.serve.inference import generate_stream

    params = {"prompt": prompt, "temperature": temperature, "max_new_tokens": max_new_tokens, "echo": False}
    device = next(base.parameters()).device
    _sync(device)
    t0 = time.perf_counter()
    last = None
    for last in generate_stream(base, tokenizer, params, str(device), context_len, stream_interval=10**9):
        pass
    _sync(device)
    seconds = time.perf_counter() - t0
    n = last["usage"]["completion_tokens"] + (1 if last["finish_reason"] == "length" else 0)
    return Run(max(n, 1), seconds, max(n, 1))


def device_name(device: str) -> str:
    """The accelerator's name, or the CPU's, as recorded in every benchmark result."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
