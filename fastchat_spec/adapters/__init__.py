"""FastChat model adapters for speculative checkpoints, in matching order."""


def adapter_classes():
    from fastchat_spec.adapters.chimera import ChimeraAdapter
    from fastchat_spec.adapters.cllm import CllmAdapter
    from fastchat_spec.adapters.hydra import HydraAdapter
    from fastchat_spec.adapters.medusa import MedusaAdapter

    return [MedusaAdapter, HydraAdapter, ChimeraAdapter, CllmAdapter]
