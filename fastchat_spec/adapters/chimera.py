"""Chimera checkpoints, in the layout of the Chimera authors' training script.

A checkpoint folder holds:

* ``config.json`` with ``chimera_num_heads``, ``chimera_num_layers`` (residual
  blocks per head) and ``base_model_name_or_path``; ours may add
  ``chimera_choices`` (the tree, as Medusa's ``medusa_choices``) and
  ``fastchat_conv_template``.
* ``trimlp.pt`` (the trigram encoder: ``0.linear.{weight,bias}``, ``1.weight``),
  ``fast_layer1.pt`` (the full-context encoder: ``{layer}.self_attn.*``,
  ``{layer}.mlp.*``, ``{layer}.*_layernorm.weight``) and ``chimera_head.pt``
  (``{head}.{block}.linear.{weight,bias}``, ``{head}.{blocks}.weight``), each a
  pickled state dict read with ``weights_only=True``, or the same names with
  ``.safetensors``.

The architecture is fixed by ``fastchat_spec/heads/chimera.py``; the tensor
shapes are checked against it and against the base (hidden and vocab sizes).
"""
from __future__ import annotations

import os
import re

import torch

from fastchat_spec.adapters.base import SpecAdapter
from fastchat_spec.adapters.checkpoint import (check_drafter_fits, first_existing, load_tensors,
                                               write_drafter_checkpoint)
from fastchat_spec.heads.chimera import PARTS, ChimeraDrafter, decoder_layer_class
from fastchat_spec.spec_model import SpecConfig

_HEAD_KEY = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")
_LAYER_KEY = re.compile(r"^(\d+)\.")


def part_files(name: str) -> list[str]:
    return [f"{name}.safetensors", f"{name}.pt"]


class ChimeraAdapter(SpecAdapter):
    method = "chimera"
    name_prefixes = ("chimera-",)
    use_fast_tokenizer = False

    def detect(self, config, path):
        return "chimera_num_heads" in config

    def spec_config(self, config, path):
        heads = config.get("chimera_num_heads")
        if not isinstance(heads, int) or heads < 1:
            raise ValueError(f"{os.path.join(path, 'config.json')}: chimera_num_heads must be an integer >= 1, "
                             f"got {heads!r}")
        return SpecConfig(
            method="chimera",
            num_heads=heads,
            num_layers=int(config.get("chimera_num_layers", 1)),
            tree=config.get("chimera_choices") or config.get("spec_tree"),
            base_model_name_or_path=config.get("base_model_name_or_path"),
            conv_template=config.get("fastchat_conv_template"),
        )

    def load_drafter(self, path, config, spec, base):
        states = {name: _read_part(path, name) for name in PARTS}
        heads, blocks, head_file = _head_shape(*states["chimera_head"])
        encoder_layers = _encoder_depth(*states["fast_layer1"])
        tri_state, tri_file = states["trimlp"]
        hidden = _trigram_hidden(tri_state, tri_file)
        check_drafter_fits("Chimera trigram encoder", hidden, None, base.config, tri_file)
        vocab, head_in = states["chimera_head"][0][f"0.{blocks}.weight"].shape
        check_drafter_fits("Chimera heads", head_in // 2, vocab, base.config, head_file)
        spec.num_heads, spec.num_layers = heads, blocks  # the weights are the truth
        drafter = ChimeraDrafter(base.config, heads, blocks, encoder_layers, decoder_layer_class(base))
        for name, (state, file) in states.items():
            _load_strict(getattr(drafter, name), state, file)
        return drafter


def _read_part(path: str, name: str) -> tuple[dict, str]:
    file = first_existing(path, part_files(name))
    if file is None:
        raise FileNotFoundError(f"no {name} weights in {path}: expected one of {part_files(name)}; copy the "
                                "file from the checkpoint or re-run fastchat_spec.train.chimera")
    return load_tensors(file), file


def _head_shape(state: dict, file: str) -> tuple[int, int, str]:
    heads, blocks = set(), set()
    for key in state:
        m = _HEAD_KEY.match(key)
        if not m:
            raise ValueError(f"unexpected tensor {key!r} in Chimera head file {file}")
        heads.add(int(m.group(1)))
        if m.group(3) != "weight":
            blocks.add(int(m.group(2)))
    if not heads or heads != set(range(len(heads))):
        raise ValueError(f"Chimera head file {file} has no heads or gaps in its head indices: {sorted(heads)}")
    if blocks != set(range(len(blocks))) or f"0.{len(blocks)}.weight" not in state:
        raise ValueError(f"Chimera head file {file} lacks residual blocks 0..{len(blocks) - 1} or the output "
                         f"layer 0.{len(blocks)}.weight; it is not a chimera_head state dict")
    return len(heads), len(blocks), file


def _encoder_depth(state: dict, file: str) -> int:
    layers = set()
    for key in state:
        m = _LAYER_KEY.match(key)
        if not m:
            raise ValueError(f"unexpected tensor {key!r} in Chimera encoder file {file}; expected {{layer}}.* keys")
        layers.add(int(m.group(1)))
    if not layers or layers != set(range(len(layers))):
        raise ValueError(f"Chimera encoder file {file} has no layers or gaps in its layer indices: {sorted(layers)}")
    return len(layers)


def _trigram_hidden(state: dict, file: str) -> int:
    if "1.weight" not in state:
        raise ValueError(f"Chimera trigram file {file} has no 1.weight (the 3H -> H projection)")
    out_features, in_features = state["1.weight"].shape
    if in_features != 3 * out_features:
        raise ValueError(f"Chimera trigram file {file}: 1.weight is {tuple(state['1.weight'].shape)}, "
                         "expected (H, 3H)")
    return out_features


def _load_strict(module: torch.nn.Module, state: dict, file: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{file} does not fit the Chimera architecture of this base model: {e}") from None


def write_chimera_checkpoint(out_dir: str, drafter: ChimeraDrafter, base_model_name_or_path: str,
                             tree=None, extra_config: dict | None = None, safetensors: bool = True) -> str:
    """Save a drafter in the published layout; returns the folder."""
    config = {
        "base_model_name_or_path": base_model_name_or_path,
        "chimera_num_heads": drafter.num_heads,
        "chimera_num_layers": drafter.num_layers,
    }
    if tree:
        config["chimera_choices"] = [list(p) for p in tree]
    config.update(extra_config or {})
    write_drafter_checkpoint(out_dir, config, drafter.part_state_dicts(), safetensors)
    return out_dir
