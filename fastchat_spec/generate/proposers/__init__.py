"""One proposer per method; ``proposer_class`` maps a method name to its class (``fastchat_spec/methods.py``)."""
from fastchat_spec.generate.proposers.base import Committed, Proposer


def proposer_class(method: str):
    from fastchat_spec.methods import method as registered

    return registered(method).proposer_class


__all__ = ["Committed", "Proposer", "proposer_class"]
