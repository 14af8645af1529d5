"""Medusa heads (Cai et al. 2024, arXiv 2401.10774).

Head k maps the base's last hidden state at position t to a guess for token
t + k + 2: ``num_layers`` residual blocks x + SiLU(Wx + b), then either the
head's own lm_head (Medusa v0.1 checkpoints) or the base lm_head (heads-only
checkpoints). The module attribute is called ``medusa_head`` so that state
dicts use the published key names.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, hidden_size: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size, bias=bias)
        nn.init.zeros_(self.linear.weight)  # a fresh head starts as the identity
        if bias:
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.silu(self.linear(x))


class MedusaHeads(nn.Module):
    def __init__(self, hidden_size: int, vocab_size: int, num_heads: int, num_layers: int = 1,
                 own_lm_head: bool = True):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"medusa_num_heads must be >= 1, got {num_heads}")
        self.own_lm_head = own_lm_head
        self.medusa_head = nn.ModuleList()
        for _ in range(num_heads):
            layers: list[nn.Module] = [ResBlock(hidden_size) for _ in range(num_layers)]
            if own_lm_head:
                layers.append(nn.Linear(hidden_size, vocab_size, bias=False))
            self.medusa_head.append(nn.Sequential(*layers))

    @property
    def num_heads(self) -> int:
        return len(self.medusa_head)

    def forward(self, hidden: torch.Tensor, lm_head: Optional[nn.Module] = None) -> torch.Tensor:
        """(..., H) -> (heads, ..., V) logits."""
        outs = []
        for head in self.medusa_head:
            x = head(hidden)
            outs.append(x if self.own_lm_head else lm_head(x))
        return torch.stack(outs)

    def init_lm_heads_from(self, lm_head: nn.Module) -> None:
        """Medusa's recipe: each head's lm_head starts as a copy of the base lm_head."""
        if self.own_lm_head:
            for head in self.medusa_head:
                head[-1].weight.data.copy_(lm_head.weight.data)
