"""Chimera checkpoints (placeholder until the chimera work lands: matches nothing)."""
from fastchat_spec.adapters.base import SpecAdapter


class ChimeraAdapter(SpecAdapter):
    method = "chimera"

    def detect(self, config, path):
        return False

    def match(self, model_path):
        return False
