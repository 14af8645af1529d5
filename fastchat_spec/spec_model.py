"""What our adapters hand to FastChat: the base model plus its drafter.

``SpecModel`` is an ``nn.Module`` so FastChat can ``.to(device)`` it and read
``.config`` (the base's config, for the context length). It holds weights and
the static description of the method (``SpecConfig``) only; every generation
keeps its own caches and proposer state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn


@dataclass
class SpecConfig:
    method: str  # a name in fastchat_spec/methods.py: medusa | hydra | chimera | cllm | ar
    num_heads: int = 0  # draft depth; for cllm, the Jacobi window length
    num_layers: int = 1
    tree: Optional[list[list[int]]] = None  # None: the method's default tree
    options: dict = field(default_factory=dict)


class SpecModel(nn.Module):
    def __init__(self, base: nn.Module, drafter: Optional[nn.Module], spec: SpecConfig):
        super().__init__()
        self.base = base
        self.drafter = drafter
        self.spec = spec

    @property
    def config(self):
        return self.base.config

    @property
    def generation_config(self):
        return self.base.generation_config

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.get_output_embeddings().weight.dtype

    def forward(self, *args, **kwargs):  # plain calls go to the base (e.g. FastChat's embeddings path)
        return self.base(*args, **kwargs)


def is_speculative(model) -> bool:
    return isinstance(model, SpecModel)
