"""Cllm checkpoints (placeholder until the cllm work lands: matches nothing)."""
from fastchat_spec.adapters.base import SpecAdapter


class CllmAdapter(SpecAdapter):
    method = "cllm"

    def detect(self, config, path):
        return False

    def match(self, model_path):
        return False
