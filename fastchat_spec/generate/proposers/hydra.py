"""Hydra proposer (placeholder until the work lands)."""
from fastchat_spec.generate.proposers.base import Proposer


class HydraProposer(Proposer):
    @classmethod
    def build(cls, model, device, options):
        raise NotImplementedError("the hydra proposer is not implemented yet")
