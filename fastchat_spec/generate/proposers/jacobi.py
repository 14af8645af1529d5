"""Jacobi proposer (placeholder until the work lands)."""
from fastchat_spec.generate.proposers.base import Proposer


class JacobiProposer(Proposer):
    @classmethod
    def build(cls, model, device, options):
        raise NotImplementedError("the jacobi proposer is not implemented yet")
