"""End-to-end decoding speed: our method against FastChat's stock decoder and our own AR decoder.

All three run in the same process on the same loaded base, prompt by prompt,
so every ratio is taken side by side; the summary quotes medians of the
per-prompt ratios.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

import torch

from fastchat_spec.generate.loop import engine_for
from fastchat_spec.generate.tickets import Job
from fastchat_spec.generate.sampling import SamplingParams


@dataclass
class Run:
    tokens: int  # tokens generated
    seconds: float  # wall time including the prefill
    steps: int  # base forward passes
    text_ids: list = field(default_factory=list)
    split: dict = field(default_factory=dict)  # seconds per phase (profiled runs only)
    first_s: float = 0.0  # wall time to the first token (the prefill, and whatever else a request waits for)

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
    """Decode with our engine loop until max_new_tokens or eos; ``method="ar"`` is our AR decoder.

    ``profile``: also report the seconds spent in the loop's batched steps
    (draft, verify, accept and commit on the device, one host read each) and
    the rest (prefill, host bookkeeping, hand-over to this thread).
    """
    loop = engine_for(model, _context_len(model), method)
    steps_s = loop.stats.seconds
    _sync(model.device)
    t0 = time.perf_counter()
    out, steps, first = _decode(loop, prompt_ids, max_new_tokens, temperature, eos)
    _sync(model.device)
    seconds = time.perf_counter() - t0
    split = {}
    if profile:
        in_steps = loop.stats.seconds - steps_s
        split = {"step": in_steps, "other": seconds - in_steps}
    return Run(len(out), seconds, steps, out, split, first - t0)


def _decode(loop, prompt_ids, max_new_tokens, temperature, eos) -> tuple[list[int], int, float]:
    """The answer's ids, the steps that made them, and when (``perf_counter``) the first token came."""
    sampling = SamplingParams(temperature, 1.0, -1, 1.0)
    ticket = loop.submit(Job(list(prompt_ids), max_new_tokens, sampling, [eos]))
    out, steps, first = [], 0, None
    for emitted in ticket.steps(loop.alive):
        first = first or time.perf_counter()
        out += emitted.tokens
        steps += 1
    out = out[:max_new_tokens]
    if eos in out:
        out = out[: out.index(eos) + 1]
    return out, steps, first or time.perf_counter()


def run_concurrent(model, prompts: list[list[int]], max_new_tokens: int, temperature: float, eos: int,
                   clients: int, method: str | None = None) -> dict:
    """``clients`` threads decode ``prompts`` through one engine loop, each taking the next prompt when done.

    Returns aggregate tok/s, per-request latency and tokens per step, the
    loop's rows per batched step, and every request's token ids.
    """
    loop = engine_for(model, _context_len(model), method)
    todo = list(enumerate(prompts))
    lock = threading.Lock()
    results: dict[int, dict] = {}
    before = dict(loop.stats.as_dict())

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i, ids = todo.pop(0)
            t0 = time.perf_counter()
            out, steps, _ = _decode(loop, ids, max_new_tokens, temperature, eos)
            results[i] = {"tokens": len(out), "steps": steps, "latency_s": time.perf_counter() - t0,
                          "text_ids": out}

    _sync(model.device)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _sync(model.device)
    wall = time.perf_counter() - t0
    runs = [results[i] for i in range(len(prompts))]
    after = loop.stats.as_dict()
    steps = after["steps"] - before["steps"]
    latencies = sorted(r["latency_s"] for r in runs)
    return {
        "clients": clients,
        "requests": len(runs),
        "tokens": sum(r["tokens"] for r in runs),
        "wall_s": wall,
        "aggregate_tok_s": sum(r["tokens"] for r in runs) / wall,
        "latency_p50_s": statistics.median(latencies),
        "latency_p90_s": latencies[int(0.9 * (len(latencies) - 1))],
        "tau": statistics.median([(r["tokens"] - 1) / (r["steps"] - 1) for r in runs if r["steps"] > 1] or [1.0]),
        "rows_per_step": (after["rows"] - before["rows"]) / steps if steps else 0.0,
        "tree_nodes_per_row": (after["nodes"] - before["nodes"]) / steps if steps else 0.0,
        "ms_per_batched_step": 1000 * (after["seconds"] - before["seconds"]) / steps if steps else 0.0,
        # Where the loop thread's time went over the wall time: batched steps, prefills, host steps.
        "loop_split_s": {k: after[f] - before[f] for k, f in
                         (("steps", "seconds"), ("prefill", "prefill_seconds"), ("host", "host_seconds"))},
        "text_ids": [r["text_ids"] for r in runs],
    }


def _context_len(model) -> int:
    from fastchat.utils import get_context_length

    return get_context_length(model.config)


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


def result_header(module: str, device: str, argv=None) -> dict:
    """What a tool's result starts with: the device, the date, torch's version and the exact command
    (``argv``, or the process's own arguments)."""
    args = sys.argv[1:] if argv is None else argv
    return {"device": device_name(device), "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "command": f"python -m {module} " + " ".join(args)}


def write_result(path: str | None, result: dict) -> None:
    """A tool's result as JSON at ``path`` (``--out``), when one was given."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
