"""Medusa checkpoints, in the three layouts that are published.

* Medusa-1 v0.1 (``FasterDecoding/medusa-vicuna-7b-v1.3``): config.json with only
  ``base_model_name_or_path``, ``medusa_num_heads``, ``medusa_num_layers``, and
  ``medusa_lm_head.pt`` with keys ``{h}.{j}.linear.{weight,bias}`` and
  ``{h}.{L}.weight`` (head h's own lm_head).
* Medusa-2 "1.0" full checkpoints: the base config plus the medusa keys, and
  ``medusa_head.{h}...`` tensors next to the base weights.
* Heads-only safetensors (``medusa_lm_head.safetensors``) with no per-head
  lm_head: the heads reuse the base lm_head.
"""
from __future__ import annotations

import re

from fastchat_spec.adapters.base import SpecAdapter
from fastchat_spec.adapters.checkpoint import (check_drafter_fits, config_int, first_existing, load_tensors,
                                               prefixed_tensors, write_drafter_checkpoint)
from fastchat_spec.heads.medusa import MedusaHeads
from fastchat_spec.spec_model import SpecConfig

HEAD_FILES = ["medusa_lm_head.safetensors", "medusa_lm_head.pt", "medusa_heads.safetensors"]
_KEY = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")


def is_full_checkpoint(config: dict) -> bool:
    """Medusa-2 style: the folder is a whole model (it has a model_type)."""
    return "model_type" in config


class MedusaAdapter(SpecAdapter):
    method = "medusa"
    name_prefixes = ("medusa-",)
    use_fast_tokenizer = False

    def detect(self, config, path):
        return "medusa_num_heads" in config

    def base_path(self, path, config):
        # A full checkpoint carries its (jointly trained) base weights itself.
        return path if is_full_checkpoint(config) else super().base_path(path, config)

    def spec_config(self, config, path):
        return SpecConfig(
            method="medusa",
            num_heads=config_int(config, "medusa_num_heads", path),
            num_layers=config_int(config, "medusa_num_layers", path, default=1),
            tree=config.get("medusa_choices") or config.get("spec_tree"),
        )

    def load_drafter(self, path, config, spec, base):
        state, file = _head_tensors(path, config)
        heads, layers, own_lm_head, hidden, vocab = _shape_from_keys(state, file)
        if heads != spec.num_heads:  # the weights are the truth (published configs sometimes disagree)
            spec.num_heads = heads
        spec.num_layers = layers
        check_drafter_fits("Medusa heads", hidden, vocab, base.config, file)
        drafter = MedusaHeads(hidden, base.config.vocab_size, heads, layers, own_lm_head=own_lm_head)
        _load_strict(drafter, state, file)
        return drafter


def _head_tensors(path: str, config: dict) -> tuple[dict, str]:
    file = first_existing(path, HEAD_FILES)
    if file is not None:
        return load_tensors(file), file
    if is_full_checkpoint(config):
        state = prefixed_tensors(path, "medusa_head.")
        if state:
            return state, path
    raise FileNotFoundError(
        f"no Medusa head weights in {path}: expected one of {HEAD_FILES} "
        "or medusa_head.* tensors in the model weights")


def _shape_from_keys(state: dict, file: str):
    heads, layers, own, hidden, vocab = set(), set(), False, None, None
    for key, tensor in state.items():
        m = _KEY.match(key)
        if not m:
            raise ValueError(f"unexpected tensor {key!r} in Medusa head file {file}")
        heads.add(int(m.group(1)))
        if m.group(3) == "weight":
            own, vocab = True, tensor.shape[0]
        else:
            layers.add(int(m.group(2)))
            hidden = tensor.shape[-1]
    if not heads or hidden is None:
        raise ValueError(f"Medusa head file {file} holds no ResBlock weights")
    if heads != set(range(len(heads))):
        raise ValueError(f"Medusa head file {file} has gaps in its head indices: {sorted(heads)}")
    return len(heads), len(layers), own, hidden, vocab if own else None


def _load_strict(drafter: MedusaHeads, state: dict, file: str) -> None:
    try:
        drafter.medusa_head.load_state_dict(state, strict=True)
    except RuntimeError as e:  # heads of different shapes, or blocks without their bias
        raise ValueError(f"Medusa head file {file} does not hold {drafter.num_heads} heads of one shape: {e}; "
                         "download or train it again") from None


def write_medusa_checkpoint(out_dir: str, heads: MedusaHeads, base_model_name_or_path: str,
                            tree=None, extra_config: dict | None = None, safetensors: bool = True) -> str:
    """Save heads in the published v0.1 layout (or heads-only safetensors); returns the folder."""
    state = heads.medusa_head.state_dict()
    config = {
        "base_model_name_or_path": base_model_name_or_path,
        "medusa_num_heads": heads.num_heads,
        "medusa_num_layers": len(heads.medusa_head[0]) - (1 if heads.own_lm_head else 0),
    }
    if tree:
        config["medusa_choices"] = [list(p) for p in tree]
    config.update(extra_config or {})
    write_drafter_checkpoint(out_dir, config, {"medusa_lm_head": state}, safetensors)
    return out_dir
