"""FastChat's sampling parameters, validated and applied exactly as FastChat does.

The logits processors are FastChat's own (``prepare_logits_processor``), so a
node of a draft tree is scored with the same temperature, repetition penalty,
top-p and top-k as stock ``generate_stream`` would use at that position.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # request validation (this module, request.py) runs in the API server, which has no torch
    import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float

    @property
    def greedy(self) -> bool:
        # FastChat's own rule for switching to argmax.
        return self.temperature < 1e-5 or self.top_p < 1e-8

    @staticmethod
    def from_request(params: dict) -> "SamplingParams":
        temperature = _number(params, "temperature", 1.0, float)
        top_p = _number(params, "top_p", 1.0, float)
        top_k = _number(params, "top_k", -1, int)
        repetition_penalty = _number(params, "repetition_penalty", 1.0, float)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 <= top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1] (0 means greedy, as in FastChat), got {top_p}")
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        return SamplingParams(temperature, top_p, top_k, repetition_penalty)


def _number(params: dict, key: str, default, kind):
    """``kind(value)`` as FastChat converts it, refusing what no decoder can use (NaN, infinity)."""
    value = params.get(key, default)
    if value is None:
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
        raise ValueError(f"{key} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):  # JSON bodies may carry NaN and Infinity (Python's json reads them)
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return number


def logits_processor(sp: SamplingParams):
    from fastchat.serve.inference import prepare_logits_processor

    return prepare_logits_processor(sp.temperature, sp.repetition_penalty, sp.top_p, sp.top_k)


def process_logits(processor, logits: torch.Tensor, history: Optional[torch.Tensor]) -> torch.Tensor:
    """Apply FastChat's processors row by row in one batched call.

    ``history`` (N, L) holds, for each row, the token ids that FastChat's
    repetition penalty would see (committed ids plus the row's tree path);
    it is only needed when a repetition penalty is set.
    """
    if not processor:
        return logits
    return processor(history, logits.clone())


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> list[float]:
    """Each row's log-probability of its token under the raw logits (k, V), as FastChat's ``logprobs``
    (a log-softmax before temperature or any other processor); one host read."""
    logits = logits.float()
    return (logits.gather(1, tokens.view(-1, 1))[:, 0] - logits.logsumexp(dim=-1)).tolist()
