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
        """The base's activations' dtype (its KV cache's): its embeddings', which no quantizer compresses
        (FastChat's --load-8bit replaces the lm_head's weight by compressed groups)."""
        from fastchat_spec.generate.verify import compute_dtype

        return compute_dtype(self.base)

    def forward(self, *args, **kwargs):  # plain calls go to the base (e.g. FastChat's embeddings path)
        return self.base(*args, **kwargs)


def is_speculative(model) -> bool:
    return isinstance(model, SpecModel)


def base_devices(model) -> set[str]:
    """Where the base's weights are: several places when FastChat's ``--num-gpus N`` (device_map "auto")
    or ``--cpu-offloading`` split it, as accelerate's ``hf_device_map`` records."""
    base = getattr(model, "base", model)
    mapped = getattr(base, "hf_device_map", None)
    if mapped:
        return {str(place) for place in mapped.values()}
    return {str(next(base.parameters()).device)}


def split_base(model) -> bool:
    """The base is spread over several devices. The speculative engine keeps every layer's KV rows and
    its graphs on one device, so such a model is served by FastChat's own decoder (``generate/stream.py``)."""
    return len(base_devices(model)) > 1


SPLIT_BASE_WARNING = (
    "fastchat-spec: the base of {path} is split over {places} (--num-gpus > 1 or --cpu-offloading). The "
    "speculative engine needs the whole base on one device, so this worker answers with FastChat's own decoder: "
    "the same text, without the speedup. To serve it speculatively, load it on one GPU (quantized if it is too "
    "large: FASTCHAT_SPEC_QUANTIZE=4bit or --load-8bit).")
