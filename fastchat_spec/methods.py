"""Every speculative method, once: its adapter, proposer, draft module, trainer and checkpoint writer.

The rest of the package asks here instead of keeping its own list:
``adapters.adapter_classes()`` (what the import hook puts in front of
FastChat's adapters, in this order), ``generate.proposers.proposer_class()``
(what the engine drafts with) and the exactness test (``tests/test_exactness.py``,
one case per method that has a writer).

Entries name their parts as ``"module:attribute"`` strings (modules alone for
the heads and the trainer), imported only when asked for: importing this
registry imports no adapter, proposer, torch module or trainer, so FastChat's
import hook stays cheap and nothing here can form an import cycle.

Adding a method ``foo`` takes new files and one line:

1. ``fastchat_spec/heads/foo.py``: the draft module, a plain ``nn.Module``
   (none for a method that drafts with the base itself, as CLLM does).
2. ``fastchat_spec/adapters/foo.py``: ``FooAdapter(SpecAdapter)`` with
   ``detect`` (which config.json is ours), ``spec_config`` and
   ``load_drafter``, and ``write_foo_checkpoint(out_dir, ...)``, which writes
   the method's published layout and returns the folder (the head methods take
   ``(out_dir, drafter, base_model_name_or_path, tree=None, extra_config=None,
   safetensors=True)``).
3. ``fastchat_spec/generate/proposers/foo.py``: ``FooProposer(Proposer)``
   (``build``, ``propose``, and ``observe``, which learns from each
   ``Committed`` event; ``tree_for`` if its tree is not the checkpoint's; with
   ``device_state = True``, an in-place ``observe`` with static shapes and
   optionally ``for_slots``, the batched greedy step runs it on the device).
4. ``fastchat_spec/train/foo.py``: its trainer, run as ``python -m fastchat_spec.train.foo``.
5. One ``Method(...)`` line in ``METHODS`` below; its position is its place in
   the adapters' matching order.
6. A tiny checkpoint for the tests: ``tests/tiny.py: TINY_CHECKPOINTS["foo"]``
   (``tests/test_exactness.py`` fails for a method with a writer and none).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Method:
    name: str  # the value of SpecConfig.method
    proposer: str  # "module:Class" of its Proposer
    adapter: Optional[str] = None  # "module:Class" of its FastChat adapter; None: it loads no checkpoint of its own
    heads: Optional[str] = None  # module of its draft nn.Modules; None: the base drafts for itself
    trainer: Optional[str] = None  # module run as `python -m` to train it
    writer: Optional[str] = None  # "module:function" writing a checkpoint in its published layout

    @property
    def proposer_class(self) -> type:
        return _attribute(self.proposer)

    @property
    def adapter_class(self) -> Optional[type]:
        return _attribute(self.adapter) if self.adapter else None

    @property
    def write_checkpoint(self) -> Optional[Callable[..., str]]:
        return _attribute(self.writer) if self.writer else None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("medusa", proposer="fastchat_spec.generate.proposers.medusa:MedusaProposer",
           adapter="fastchat_spec.adapters.medusa:MedusaAdapter", heads="fastchat_spec.heads.medusa",
           trainer="fastchat_spec.train.medusa", writer="fastchat_spec.adapters.medusa:write_medusa_checkpoint"),
    Method("hydra", proposer="fastchat_spec.generate.proposers.hydra:HydraProposer",
           adapter="fastchat_spec.adapters.hydra:HydraAdapter", heads="fastchat_spec.heads.hydra",
           trainer="fastchat_spec.train.hydra", writer="fastchat_spec.adapters.hydra:write_hydra_checkpoint"),
    Method("chimera", proposer="fastchat_spec.generate.proposers.chimera:ChimeraProposer",
           adapter="fastchat_spec.adapters.chimera:ChimeraAdapter", heads="fastchat_spec.heads.chimera",
           trainer="fastchat_spec.train.chimera", writer="fastchat_spec.adapters.chimera:write_chimera_checkpoint"),
    Method("cllm", proposer="fastchat_spec.generate.proposers.jacobi:JacobiProposer",
           adapter="fastchat_spec.adapters.cllm:CllmAdapter",  # the base drafts its own Jacobi window: no heads
           trainer="fastchat_spec.train.cllm", writer="fastchat_spec.adapters.cllm:write_cllm_checkpoint"),
    # Our autoregressive baseline (the benchmarks' `ar` on any checkpoint): nothing to load, train or write.
    Method("ar", proposer="fastchat_spec.generate.proposers.autoregressive:AutoregressiveProposer"),
)}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown speculative method {name!r}; known: {sorted(METHODS)} "
                         "(fastchat_spec/methods.py lists them)")
    return METHODS[name]


def adapter_classes() -> list[type]:
    """Our FastChat adapters, in matching order (the first that matches a path loads it)."""
    return [m.adapter_class for m in METHODS.values() if m.adapter]


def _attribute(reference: str):
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)
