"""Hydra checkpoints (placeholder until the hydra work lands: matches nothing)."""
from fastchat_spec.adapters.base import SpecAdapter


class HydraAdapter(SpecAdapter):
    method = "hydra"

    def detect(self, config, path):
        return False

    def match(self, model_path):
        return False
