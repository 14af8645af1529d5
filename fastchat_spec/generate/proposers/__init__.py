"""One proposer per method; ``proposer_class`` maps a method name to its class."""
from fastchat_spec.generate.proposers.base import Accepted, Commit, Proposer


def proposer_class(method: str):
    from fastchat_spec.generate.proposers import autoregressive, chimera, hydra, jacobi, medusa

    table = {
        "ar": autoregressive.AutoregressiveProposer,
        "medusa": medusa.MedusaProposer,
        "hydra": hydra.HydraProposer,
        "chimera": chimera.ChimeraProposer,
        "cllm": jacobi.JacobiProposer,
    }
    if method not in table:
        raise ValueError(f"unknown speculative method {method!r}; known: {sorted(table)}")
    return table[method]


__all__ = ["Accepted", "Commit", "Proposer", "proposer_class"]
