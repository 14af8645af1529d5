"""A preallocated KV cache that the Hugging Face model writes by position.

We hand the model a ``transformers`` ``Cache`` made of full-length static
layers. The model's own attention writes each new key/value at
``cache_position``; we decide visibility with an explicit 4D mask, so stale
entries (rejected tree nodes) are simply masked and later overwritten, as in
gpt-fast. Committing an accepted path copies its entries into contiguous slots.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, StaticLayer


def _kv_shape(config) -> tuple[int, int, int]:
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def new_cache(config, max_len: int, device, dtype) -> Cache:
    """A cache with room for ``max_len`` positions, allocated now (not lazily)."""
    num_layers, kv_heads, head_dim = _kv_shape(config)
    layers = []
    for _ in range(num_layers):
        layer = StaticLayer(max_cache_len=max_len)
        layer.lazy_initialization(torch.empty(1, kv_heads, 1, head_dim, device=device, dtype=dtype))
        layers.append(layer)
    return Cache(layers=layers)


def bucket(length: int) -> int:
    """Cache capacities come in powers of two (from 512) so graphs are reused across requests."""
    size = 512
    while size < length:
        size *= 2
    return size


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (cache and bucket lengths)."""
    return -(-n // multiple) * multiple


def capacity(cache: Cache) -> int:
    return cache.layers[0].max_cache_len


def commit_path(cache: Cache, start: torch.Tensor, path_nodes: torch.Tensor) -> None:
    """Move the entries of an accepted tree path to contiguous slots.

    The tree was written at slots ``start + node``. ``path_nodes`` (D+1,) lists
    the accepted nodes from the root, padded to a fixed length (so the copy has
    a static shape); the padding copies land beyond the new end and stay masked.
    """
    src = start + path_nodes
    dst = start + torch.arange(path_nodes.numel(), device=path_nodes.device)
    for layer in cache.layers:
        layer.keys.index_copy_(2, dst, layer.keys.index_select(2, src))
        layer.values.index_copy_(2, dst, layer.values.index_select(2, src))
