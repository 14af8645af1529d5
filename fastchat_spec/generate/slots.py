"""KV slots: one preallocated cache row per request, for batched speculative steps.

Every layer's keys and values live in one tensor (slots, kv_heads, capacity,
head_dim). A request owns a slot (a row) from its prefill to its end. A
batched forward reads rows ``first .. first+b`` up to ``length`` positions
through views, so the model's own attention runs on (b, heads, length, d) and
its cost follows the longest active request, not the slot capacity.

Rows advance at their own positions, so the model's cache layer cannot write
by its shared ``cache_position``: ``RowsLayer`` writes each row at the
positions in ``write_at`` (b, T), which the step fills before the forward.
Visibility is an explicit 4D mask per row, as in ``verify.attention_mask``.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, StaticLayer

from fastchat_spec.generate.kv_cache import _kv_shape


class RowsLayer(StaticLayer):
    """One layer's keys/values for a block of rows, written at per-row positions."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, write_at: torch.Tensor):
        super().__init__(max_cache_len=keys.shape[2])
        self.keys, self.values = keys, values
        self.max_batch_size, self.num_heads, _, self.head_dim = keys.shape
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self.write_at = write_at  # (b, T) cache positions of the block's tokens, per row

    def update(self, key_states, value_states, cache_kwargs=None):
        b, h, t, d = key_states.shape
        index = self.write_at.view(b, 1, t, 1).expand(b, h, t, d)
        self.keys.scatter_(2, index, key_states)
        self.values.scatter_(2, index, value_states)
        return self.keys, self.values


class SlotStore:
    """The KV cache rows of every request one engine loop serves."""

    def __init__(self, config, slots: int, capacity: int, device, dtype):
        num_layers, kv_heads, head_dim = _kv_shape(config)
        shape = (slots, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.slots, self.capacity = slots, capacity

    def rows(self, first: int, count: int, length: int, write_at: torch.Tensor) -> Cache:
        """A cache over rows first..first+count, positions 0..length, written at ``write_at``."""
        rows = slice(first, first + count)
        return Cache(layers=[RowsLayer(k[rows, :, :length], v[rows, :, :length], write_at)
                             for k, v in zip(self.keys, self.values)])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


def rows_mask(starts: torch.Tensor, visible: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (b, 1, T, length) for blocks written at ``starts`` (b,).

    Row r, token i sees the committed positions before ``starts[r]`` and the
    block positions j with ``visible[i, j]``; stale and foreign entries are masked.
    """
    t = visible.shape[0]
    positions = torch.arange(length, device=visible.device)
    rel = positions.unsqueeze(0) - starts.unsqueeze(1)  # (b, L)
    in_block = (rel >= 0) & (rel < t)
    block = visible[:, rel.clamp(0, t - 1)].transpose(0, 1)  # (b, T, L)
    allowed = (rel < 0).unsqueeze(1) | (block & in_block.unsqueeze(1))
    mask = torch.zeros(allowed.shape, device=visible.device, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def commit_rows(cache: Cache, starts: torch.Tensor, paths: torch.Tensor) -> None:
    """Move each row's accepted tree path (b, P) to contiguous positions from its start."""
    b, p = paths.shape
    src = (starts.unsqueeze(1) + paths).view(b, 1, p, 1)
    dst = (starts.unsqueeze(1) + torch.arange(p, device=paths.device)).view(b, 1, p, 1)
    for layer in cache.layers:
        for store in (layer.keys, layer.values):
            h, d = store.shape[1], store.shape[3]
            moved = store.gather(2, src.expand(b, h, p, d))
            store.scatter_(2, dst.expand(b, h, p, d), moved)
