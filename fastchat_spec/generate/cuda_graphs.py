"""CUDA graphs: one capture helper, and pooled static caches for host-driven requests.

Stock FastChat runs Hugging Face's forward eagerly, one kernel launch at a
time; at small batch the launches, not the weights, set the step time. Here a
step of one static shape is captured once and replayed. ``capture`` is the one
way this package captures: the engine loop captures its batched steps with it
(``loop.py``), and the host-driven step (``engine.py``) its verification
forward and KV commit, which are bound to the cache buffers they were captured
with: caches and their graphs live together in a ``Runner``, borrowed from a
bounded per-model pool while a request runs.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Optional

import torch

from fastchat_spec.generate.kv_cache import bucket, commit_path, new_cache
from fastchat_spec.generate.verify import ForwardOut, base_forward

GRAPHS_ENV = "FASTCHAT_SPEC_CUDA_GRAPHS"  # set to 0 to run eagerly on CUDA
COMPILE_ENV = "FASTCHAT_SPEC_COMPILE"  # set to 1 to torch.compile the decoder inside the graphs
COMPILE_MODE_ENV = "FASTCHAT_SPEC_COMPILE_MODE"  # torch.compile mode, e.g. max-autotune-no-cudagraphs
# (max-autotune gave a slower AR step than the default mode on the H100, with freezing or without: BENCHMARKS.md §1)
# Set to 1 to compile with Inductor's freezing: the weights become constants, so each layer's q, k and v
# projections (and gate and up) are concatenated into one GEMM. Each compiled shape (a worker has one per
# prefill length and batch size) should hold its own copy of those weights, and the weights must not change
# after the first step.
COMPILE_FREEZE_ENV = "FASTCHAT_SPEC_COMPILE_FREEZE"
log = logging.getLogger("fastchat_spec.cuda_graphs")
_CAPTURE_LOCK = threading.Lock()
_CAPTURE_STREAMS: dict[int, torch.cuda.Stream] = {}  # device index -> the stream graphs are captured on by default
_STREAMS_LOCK = threading.Lock()
_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()


def graphs_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get(GRAPHS_ENV, "1") != "0"


def compiled_decoder(base):
    """The base's decoder fused by ``torch.compile`` (norms, rotary and activations in few kernels).

    Only used inside our own graphs, where shapes are static; the graph replay
    then removes what launch overhead is left.
    """
    if os.environ.get(COMPILE_ENV, "0") != "1":
        if freezing_enabled():
            log.warning("%s=1 does nothing without %s=1: the decoder is not compiled", COMPILE_FREEZE_ENV,
                        COMPILE_ENV)
        return None
    decoder = _COMPILED.get(base)
    if decoder is None:
        decoder = torch.compile(base.get_decoder(), dynamic=False, fullgraph=False, **compile_settings())
        if freezing_enabled():
            decoder = _with_weights_as_constants(decoder)
        _COMPILED[base] = decoder
    return decoder


def freezing_enabled() -> bool:
    return os.environ.get(COMPILE_FREEZE_ENV, "0") == "1"


def compile_settings() -> dict:
    """torch.compile's ``mode`` or ``options``, from the environment (they can't both be given)."""
    mode = os.environ.get(COMPILE_MODE_ENV) or None
    if not freezing_enabled():
        return {"mode": mode}
    from torch._inductor import list_mode_options

    return {"options": {**(list_mode_options(mode) if mode else {}), "freezing": True}}


def _with_weights_as_constants(compiled):
    """Calls ``compiled`` with Dynamo keeping the module's parameters as attributes, not graph inputs.

    Freezing folds only attributes into constants; with the default inlining of
    nn.Modules the parameters arrive as inputs and nothing is fused (measured on
    the H100: the same 631 kernels per step with and without freezing). The
    setting is process-wide while a call runs; the compiles themselves happen
    in captures' warm-ups, which are serialised (``_CAPTURE_LOCK``).
    """
    def call(*args, **kwargs):
        with torch._dynamo.config.patch(inline_inbuilt_nn_modules=False):
            return compiled(*args, **kwargs)

    return call


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def default_capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream ``capture`` captures on unless told otherwise: one per device, for the graphs that replay on
    the engine loop's stream (batched steps, host-driven steps)."""
    index = _device_index(device)
    with _STREAMS_LOCK:
        if index not in _CAPTURE_STREAMS:
            _CAPTURE_STREAMS[index] = torch.cuda.Stream(index)
        return _CAPTURE_STREAMS[index]


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """A stream for graphs that replay beside the loop's, never ``default_capture_stream``: PyTorch hands
    streams out from a pool of 32 in turn, so a new one can be the very stream the steps were captured on,
    and graphs captured on it would share the steps' cuBLAS workspace (``capture``)."""
    shared, index = default_capture_stream(device), _device_index(device)
    stream = torch.cuda.Stream(index)
    while stream.cuda_stream == shared.cuda_stream:
        stream = torch.cuda.Stream(index)
    return stream


def capture(run, device: torch.device, warmups: int = 3, pool=None, stream=None):
    """``run`` (no arguments, static buffers) captured as a CUDA graph: (replay, what the captured run returned).

    The warm-up runs on a side stream (kernels chosen, compiled, allocated)
    outside the graph. ``thread_local`` capture: work that other threads
    launch meanwhile (FastChat's stock decoder, say) neither breaks the
    capture nor is recorded into it. Captures are serialised process-wide.

    ``stream``: the stream to capture on (default: ``default_capture_stream``).
    A graph keeps the cuBLAS workspace of the stream it was captured on
    (PyTorch keys workspaces by handle and stream), so graphs that may replay
    at the same time on different streams must be captured on different
    streams, or their GEMMs share scratch memory.
    """
    with _CAPTURE_LOCK:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(warmups):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        stream = stream if stream is not None else default_capture_stream(device)
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool, stream=stream,
                                                        capture_error_mode="thread_local"):
            out = run()
    return graph.replay, out


class GraphedForward:
    """``base_forward`` for one block shape, captured as a CUDA graph."""

    def __init__(self, base, cache, visible: torch.Tensor):
        t = visible.shape[0]
        device = visible.device
        self.visible = visible
        self.tokens = torch.zeros(t, dtype=torch.long, device=device)
        self.positions = torch.arange(t, dtype=torch.long, device=device)
        self.start = torch.zeros((), dtype=torch.long, device=device)
        decoder = compiled_decoder(base)
        run = lambda: base_forward(base, cache, self.tokens, self.positions, self.start, self.visible,  # noqa: E731
                                   decoder)
        # The warm-up writes into the cache at slots 0..t; the owner's next prefill overwrites them.
        self.replay, self.out = capture(run, device)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, start: torch.Tensor) -> ForwardOut:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.start.copy_(start)
        self.replay()
        return self.out


class GraphedCommit:
    """``commit_path`` over every layer as one graph replay instead of 4 launches per layer."""

    def __init__(self, cache, path_len: int, device):
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.path = torch.zeros(path_len, dtype=torch.long, device=device)
        self.replay, _ = capture(lambda: commit_path(cache, self.start, self.path), device, warmups=1)

    def __call__(self, cache, start: torch.Tensor, path: torch.Tensor) -> None:
        self.start.copy_(start)
        self.path.copy_(path)
        self.replay()


class Runner:
    """A static KV cache and the graphs captured over it."""

    def __init__(self, base, capacity: int, device: torch.device, dtype: torch.dtype):
        self.base = base
        self.capacity = capacity
        self.cache = new_cache(base.config, capacity, device, dtype)
        self._graphs: dict[bytes, GraphedForward] = {}
        self._commits: dict[int, GraphedCommit] = {}

    def forward_for(self, visible: torch.Tensor):
        key = visible.cpu().numpy().tobytes() + bytes(str(visible.shape), "ascii")
        graph = self._graphs.get(key)
        if graph is None:
            graph = GraphedForward(self.base, self.cache, visible)
            self._graphs[key] = graph
        return graph

    def commit_for(self, path_len: int):
        graph = self._commits.get(path_len)
        if graph is None:
            graph = GraphedCommit(self.cache, path_len, self.cache.layers[0].keys.device)
            self._commits[path_len] = graph
        return graph


MAX_IDLE_RUNNERS = 4  # per capacity: more concurrent host-driven requests than this allocate and drop theirs


class RunnerPool:
    """Idle runners of one model, by capacity (bounded: a burst does not pin its caches for good)."""

    def __init__(self):
        self._idle: dict[int, list[Runner]] = {}
        self._lock = threading.Lock()

    def acquire(self, base, length: int, device: torch.device, dtype: torch.dtype) -> Runner:
        capacity = bucket(length)
        with self._lock:
            idle = self._idle.get(capacity)
            if idle:
                return idle.pop()
        return Runner(base, capacity, device, dtype)

    def release(self, runner: Runner) -> None:
        with self._lock:
            idle = self._idle.setdefault(runner.capacity, [])
            if len(idle) < MAX_IDLE_RUNNERS:
                idle.append(runner)


_POOLS: "weakref.WeakKeyDictionary[torch.nn.Module, RunnerPool]" = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def pool_for(base) -> RunnerPool:
    with _POOLS_LOCK:
        pool = _POOLS.get(base)
        if pool is None:
            pool = _POOLS[base] = RunnerPool()
        return pool


def borrow_runner(base, length: int, device: torch.device, dtype: torch.dtype) -> Optional[Runner]:
    if not graphs_enabled(device):
        return None
    return pool_for(base).acquire(base, length, device, dtype)
