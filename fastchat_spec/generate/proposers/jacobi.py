"""Jacobi proposer: the n-token window of Jacobi decoding, verified by the shared engine.

References: Santilli et al. 2023, "Accelerating Transformer Inference for
Translation via Parallel Decoding" (Jacobi decoding), and Kou et al. 2024,
"CLLMs: Consistency Large Language Models" (arXiv 2403.00835), whose models are
trained so that this iteration converges in few steps.

Jacobi decoding keeps a window of n tokens: the last committed token (the
engine's root) and n-1 guesses for the tokens after it. One forward of the
window gives, at every row, the model's prediction of the next position. The
window is a chain, so the engine's usual verification applies unchanged: the
guesses equal to the predictions before them are the converged prefix and are
committed (greedy: exactly autoregressive greedy decoding; sampling: lossless
rejection sampling with point-mass drafts), with only their KV entries kept.

The Jacobi update is ``observe``: the predictions of that same forward (the
event's logits) at the rows after the accepted prefix become the next window's
guesses, so no extra forward is spent. A step that accepts ``a`` guesses
leaves only ``n-1-a`` predictions for the new window; the ``a`` missing
guesses at its end are filled with tokens drawn from the prompt, as CLLM
initialises its windows (and as its training trajectories start), from a pool
fixed at prefill so a step needs no host round trip.
"""
from __future__ import annotations

import torch

from fastchat_spec.generate.proposers.base import Committed, Proposer
from fastchat_spec.generate.tree import chain

OPTION = "n_token_seq_length"  # FastChat main's request key for the window length
DEFAULT_WINDOW = 16
MAX_WINDOW = 256
FILL_SEED = 0  # the filler pool depends only on the prompt, so runs are reproducible


class JacobiProposer(Proposer):
    def __init__(self, window: int, device: torch.device):
        self.window = window
        self.tree = chain(window - 1).to(device)
        self.device = device
        self.guess = None  # (n-1,) guesses for the positions after the next root
        self.fill = None  # (n-1,) prompt tokens for the tail of a window
        self.offsets = torch.arange(window - 1, device=device)

    @classmethod
    def tree_for(cls, model, options=None):
        return chain(window_length(model, options or {}) - 1)

    @classmethod
    def build(cls, model, device, options):
        return cls(window_length(model, options), device)

    def observe(self, event: Committed) -> None:
        if self.fill is None:  # the prefill: ``event.tokens`` is the prompt
            self.fill = prompt_filler(event.tokens, self.window - 1)
            self.guess = self.fill
            return
        # Row i of the forward predicts the position after node i. The root and
        # the accepted guesses are rows 0..a (a = depth); row a chose the next
        # root, so rows a+1..n-1 predict the positions after it: the Jacobi
        # update. After those n-1-a predictions come the first a filler tokens.
        predictions = torch.cat([event.logits.argmax(dim=-1), self.fill])  # (n + n-1,)
        self.guess = predictions.index_select(0, event.depth + 1 + self.offsets)

    def propose(self, root: torch.Tensor) -> torch.Tensor:
        return self.guess


def window_length(model, options: dict) -> int:
    """The request's ``n_token_seq_length``, else the checkpoint's, else 16."""
    if options.get(OPTION) is not None:
        return checked_window(options[OPTION], f"the request's {OPTION}")
    return checked_window(model.spec.num_heads or None, f"the checkpoint's {OPTION} (config.json)")


def checked_window(value, where: str) -> int:
    """``value`` as a Jacobi window length; None means the default. Errors name ``where`` and the fix."""
    if value is None:
        return DEFAULT_WINDOW
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be an integer, got {value!r}; fix it, or leave it out for the "
                         "default") from None
    if not 1 <= n <= MAX_WINDOW:
        raise ValueError(f"{where} is {n}; use a Jacobi window of 1 to {MAX_WINDOW} tokens (CLLMs use 16 to 32)")
    return n


def prompt_filler(prompt: torch.Tensor, width: int) -> torch.Tensor:
    """``width`` tokens drawn uniformly from the prompt (CLLM's window initialisation)."""
    if width == 0:
        return prompt[:0]
    generator = torch.Generator().manual_seed(FILL_SEED)
    picks = torch.randint(prompt.numel(), (width,), generator=generator)
    return prompt[picks.to(prompt.device)]
