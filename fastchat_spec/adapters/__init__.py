"""FastChat model adapters for speculative checkpoints, in matching order (``fastchat_spec/methods.py``)."""


def adapter_classes():
    from fastchat_spec.methods import adapter_classes

    return adapter_classes()
