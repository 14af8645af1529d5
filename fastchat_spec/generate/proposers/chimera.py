"""Chimera proposer (placeholder until the work lands)."""
from fastchat_spec.generate.proposers.base import Proposer


class ChimeraProposer(Proposer):
    @classmethod
    def build(cls, model, device, options):
        raise NotImplementedError("the chimera proposer is not implemented yet")
