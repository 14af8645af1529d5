"""Run the base model over a block of tokens: a prompt, a tree or a window.

We call the Hugging Face model's own decoder with an explicit 4D mask, position
ids and cache positions, so any decoder-only model with a standard cache works
(Llama, Mistral, Qwen2); nothing of ``modeling_llama`` is copied here.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# Every SDPA backend but cuDNN's, for forwards whose length is a request's own (see ``eager_attention``).
EAGER_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class ForwardOut:
    logits: torch.Tensor  # (T, V) float32
    hidden: torch.Tensor  # (T, H) last hidden state (after the final norm), model dtype


def attention_mask(start: torch.Tensor, visible: torch.Tensor, capacity: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (1, 1, T, capacity) for a block written at ``start``.

    Row i sees every committed slot before ``start`` and the block slots j with
    ``visible[i, j]`` (its tree ancestors, or the causal past for a chain).
    Everything else, stale entries included, is masked. ``start`` is a 0-d
    device tensor so the same code runs inside a CUDA graph.
    """
    t = visible.shape[0]
    slots = torch.arange(capacity, device=visible.device)
    rel = slots - start
    in_block = (rel >= 0) & (rel < t)
    allowed = (slots < start).unsqueeze(0) | (visible[:, rel.clamp(0, t - 1)] & in_block.unsqueeze(0))
    mask = torch.zeros(t, capacity, device=visible.device, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.view(1, 1, t, capacity)


@contextmanager
def eager_attention():
    """Attention for an eager forward whose length comes from the request (a prompt, on the host path).

    SDPA prefers cuDNN on Hopper, and cuDNN builds an execution plan for each
    new shape the first time it sees it: tens of milliseconds per prompt
    length never seen before (``python -m fastchat_spec.bench.first_use``).
    Fixed-shape forwards (the graphed steps and prompt buckets, captured at
    load) keep it; these take the other backends, which need no plan.
    """
    with sdpa_kernel(EAGER_BACKENDS):
        yield


def compute_dtype(base) -> torch.dtype:
    """The dtype of the base's activations (float16 when its embeddings are quantised)."""
    dtype = base.get_input_embeddings().weight.dtype
    return dtype if dtype.is_floating_point else torch.float16


def causal_visibility(length: int, device) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).tril_()


def base_forward(base, cache, tokens: torch.Tensor, positions: torch.Tensor, start: torch.Tensor,
                 visible: torch.Tensor, decoder=None) -> ForwardOut:
    """One forward of ``base`` over ``tokens`` (T,) at ``positions`` (T,), written at slots start..start+T.

    ``decoder`` replaces ``base.get_decoder()`` (e.g. a ``torch.compile``d one).
    """
    capacity = cache.layers[0].max_cache_len
    mask = attention_mask(start, visible, capacity, compute_dtype(base))
    t = tokens.shape[0]
    out = forward_rows(base, cache, tokens.view(1, t), positions.view(1, t), mask,
                       start + torch.arange(t, device=tokens.device), decoder)
    return ForwardOut(logits=out.logits[0], hidden=out.hidden[0])


def forward_rows(base, cache, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 cache_position: torch.Tensor, decoder=None, logits_at: torch.Tensor | None = None) -> ForwardOut:
    """The base over a batch of blocks: tokens and positions (b, T), a 4D mask (b, 1, T, L).

    Returns batched ``ForwardOut`` fields: logits (b, T, V), hidden (b, T, H);
    with ``logits_at`` (K,), logits only at those block positions (b, K, V).
    ``cache_position`` is what the cache layers are told; slot caches write by
    their own per-row positions instead (``generate/slots.py``).
    """
    out = (decoder if decoder is not None else base.get_decoder())(
        input_ids=tokens,
        position_ids=positions,
        attention_mask=mask,
        past_key_values=cache,
        cache_position=cache_position,
        use_cache=True,
    )
    hidden = out.last_hidden_state
    picked = hidden if logits_at is None else hidden[:, logits_at]
    return ForwardOut(logits=base.get_output_embeddings()(picked).float(), hidden=hidden)
