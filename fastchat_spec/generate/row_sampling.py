"""FastChat's sampling, batched: every row of a step with its own temperature, top-p and top-k.

The batched device step (``batch_step.py``) serves sampled requests beside
greedy ones, so it cannot call FastChat's logits processors, which take one
set of parameters. ``row_probs`` applies the same three warpers in FastChat's
order (``prepare_logits_processor``: temperature, then top-p, then top-k),
each as Hugging Face computes it, with one parameter per row; ``draw`` samples
a token per row as ``torch.multinomial`` does (an exponential race). Both run
on device tensors with static shapes, so a CUDA graph can hold them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastchat_spec.generate.sampling import SamplingParams


@dataclass
class RowSampling:
    """Per-row sampling parameters on the device; a greedy row holds neutral values and ``sampled`` False."""

    sampled: torch.Tensor  # (b,) bool
    temperature: torch.Tensor  # (b,) float32
    top_p: torch.Tensor  # (b,) float32
    top_k: torch.Tensor  # (b,) long, <= 0: no cut

    @staticmethod
    def zeros(rows: int, device) -> "RowSampling":
        return RowSampling(torch.zeros(rows, dtype=torch.bool, device=device),
                           torch.ones(rows, dtype=torch.float32, device=device),
                           torch.ones(rows, dtype=torch.float32, device=device),
                           torch.zeros(rows, dtype=torch.long, device=device))

    def __getitem__(self, rows: slice) -> "RowSampling":
        return RowSampling(self.sampled[rows], self.temperature[rows], self.top_p[rows], self.top_k[rows])

    def set(self, slot: int, params: SamplingParams | None) -> None:
        """Write one slot's parameters (``fill_`` on a view: no host-to-device copy that waits)."""
        sampled = params is not None and not params.greedy
        self.sampled[slot].fill_(sampled)
        self.temperature[slot].fill_(params.temperature if sampled else 1.0)
        self.top_p[slot].fill_(params.top_p if sampled else 1.0)
        self.top_k[slot].fill_(params.top_k if sampled else 0)


def first_token(prefilled, params: SamplingParams | None) -> torch.Tensor:
    """The token after a prompt, on the device: the argmax of the prefill's logits, or drawn with the request's
    sampling."""
    if params is None or params.greedy:
        return prefilled.logits.argmax()
    sampling = RowSampling.zeros(1, prefilled.logits.device)
    sampling.set(0, params)
    return draw(row_probs(prefilled.logits.unsqueeze(0), sampling))[0]


def row_probs(logits: torch.Tensor, sampling: RowSampling) -> torch.Tensor:
    """(b, V) logits -> (b, V) float32 probabilities after each row's temperature, top-p and top-k.

    Top-p is Hugging Face's rule: sorted ascending, a token goes when the
    mass up to and including it is at most 1 - top_p (the likeliest token
    always stays; top_p 1 removes only tokens of zero probability). Top-k
    then keeps the tokens not below the k-th largest of what top-p kept.
    """
    scores = logits.float() / sampling.temperature.unsqueeze(1)
    ascending, order = scores.sort(dim=-1)
    drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - sampling.top_p).unsqueeze(1)
    drop[:, -1] = False
    kept = ascending.masked_fill(drop, float("-inf"))
    vocab = scores.shape[-1]
    kth = kept.gather(1, (vocab - sampling.top_k.clamp(1, vocab)).unsqueeze(1))  # k-th largest kept score
    drop |= (kept < kth) & (sampling.top_k > 0).unsqueeze(1)
    removed = torch.zeros_like(drop).scatter_(1, order, drop)
    return scores.masked_fill(removed, float("-inf")).softmax(dim=-1)


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of (b, V) probabilities, as ``torch.multinomial(probs, 1)`` draws it, without its
    host-side checks: the argmax of p / E with E exponential."""
    return (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1)
