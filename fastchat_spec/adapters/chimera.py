"""Chimera checkpoints, in the layout of the Chimera authors' training script.

A checkpoint folder holds:

* ``config.json`` with ``chimera_num_heads``, ``chimera_num_layers`` (residual
  blocks per head) and ``base_model_name_or_path``; ours may add
  ``chimera_choices`` (the tree, as Medusa's ``medusa_choices``),
  ``chimera_head_arch`` and ``fastchat_conv_template``.
* ``trimlp.pt`` (the trigram encoder: ``0.linear.{weight,bias}``, ``1.weight``),
  ``fast_layer1.pt`` (the full-context encoder: ``{layer}.self_attn.*``,
  ``{layer}.mlp.*``, ``{layer}.*_layernorm.weight``) and ``chimera_head.pt``
  (``{head}.{block}.linear.{weight,bias}``, ``{head}.{blocks}.weight``), each a
  pickled state dict read with ``weights_only=True``, or the same names with
  ``.safetensors``.

Two head architectures share these names (``fastchat_spec/heads/chimera.py``):
ours reads ``[h_t; F]`` (head output layer ``(V, 2H)``), the authors' released
weights read the encoder output ``F`` alone (``(V, H)``). The width of the
head file's output layer tells them apart; ``chimera_head_arch`` in
config.json, when present, must agree with it. The authors' heads repeat one
residual block object (``[ResBlock] * n``), so their files hold equal tensors
under every block index; they load into independent blocks unchanged. Tensor
shapes are checked against the base (hidden and vocab sizes).
"""
from __future__ import annotations

import os
import re

import torch

from fastchat_spec.adapters.base import SpecAdapter
from fastchat_spec.adapters.checkpoint import (check_drafter_fits, config_int, first_existing, load_tensors,
                                               write_drafter_checkpoint)
from fastchat_spec.heads.chimera import HEAD_ARCHS, PARTS, ChimeraDrafter, decoder_layer_class
from fastchat_spec.spec_model import SpecConfig

_HEAD_KEY = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")
_LAYER_KEY = re.compile(r"^(\d+)\.")
# transformers <= 4.30 saved the rotary frequencies with each attention layer; they are a function of the
# base's config, which the encoder takes from the base itself.
_ROTARY_BUFFER = re.compile(r"^\d+\.self_attn\.rotary_emb\.inv_freq$")
UNSUPPORTED_PARTS = ("fast_layer0",)  # a second (trigram-only) encoder of the authors' early code


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
        arch = config.get("chimera_head_arch")
        if arch is not None and arch not in HEAD_ARCHS:
            raise ValueError(f"{os.path.join(path, 'config.json')}: chimera_head_arch={arch!r} is not one of "
                             f"{HEAD_ARCHS}; remove the key to infer it from chimera_head's weights")
        return SpecConfig(
            method="chimera",
            num_heads=heads,
            num_layers=config_int(config, "chimera_num_layers", path, default=1),
            tree=config.get("chimera_choices") or config.get("spec_tree"),
            options={"chimera_head_arch": arch},  # None until the head weights settle it
        )

    def load_drafter(self, path, config, spec, base):
        states = read_parts(path)
        heads, blocks, head_file = _head_shape(*states["chimera_head"])
        encoder_layers = _encoder_depth(*states["fast_layer1"])
        tri_state, tri_file = states["trimlp"]
        hidden = _trigram_hidden(tri_state, tri_file)
        check_drafter_fits("Chimera trigram encoder", hidden, None, base.config, tri_file)
        vocab, head_in = states["chimera_head"][0][f"0.{blocks}.weight"].shape
        arch = _head_arch(head_in, hidden, head_file, spec.options.get("chimera_head_arch"), path)
        check_drafter_fits("Chimera heads", hidden, vocab, base.config, head_file)
        spec.num_heads, spec.num_layers = heads, blocks  # the weights are the truth
        spec.options["chimera_head_arch"] = arch
        drafter = ChimeraDrafter(base.config, heads, blocks, encoder_layers, decoder_layer_class(base), arch)
        for name, (state, file) in states.items():
            _load_strict(getattr(drafter, name), state, file)
        return drafter


def read_parts(path: str) -> dict[str, tuple[dict, str]]:
    """{part: (state dict, file)} for ``trimlp``, ``fast_layer1`` and ``chimera_head`` of a checkpoint folder."""
    _refuse_unsupported_parts(path)
    states = {name: _read_part(path, name) for name in PARTS}
    encoder_state, encoder_file = states["fast_layer1"]
    states["fast_layer1"] = {k: v for k, v in encoder_state.items() if not _ROTARY_BUFFER.match(k)}, encoder_file
    return states


def _refuse_unsupported_parts(path: str) -> None:
    for name in UNSUPPORTED_PARTS:
        file = first_existing(path, part_files(name))
        if file is not None:
            raise NotImplementedError(
                f"{file}: a Chimera checkpoint with a second, trigram-only encoder ({name}) is not supported; "
                "fastchat-spec runs trimlp -> fast_layer1 -> chimera_head (the parts the authors' evaluation "
                "script loads with their released weights). Retrain with fastchat_spec.train.chimera "
                "--chimera_head_arch published")


def _head_arch(head_in: int, hidden: int, file: str, declared: str | None, path: str) -> str:
    """The head architecture the weights have: input width 2H (ours) or H (the authors' released heads)."""
    by_width = {2 * hidden: "residual", hidden: "published"}
    arch = by_width.get(head_in)
    if arch is None:
        raise ValueError(f"Chimera head file {file}: the heads read {head_in} features, but the trigram encoder "
                         f"has hidden size {hidden}; expected {2 * hidden} ([h_t; F], ours) or {hidden} (F alone, "
                         "the authors' released heads). The files come from different checkpoints")
    if declared is not None and declared != arch:
        raise ValueError(f"{os.path.join(path, 'config.json')} says chimera_head_arch={declared!r} but the heads "
                         f"in {file} read {head_in} features, which is {arch!r}; fix or remove the key")
    return arch


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
        "chimera_head_arch": drafter.head_arch,
    }
    if tree:
        config["chimera_choices"] = [list(p) for p in tree]
    config.update(extra_config or {})
    write_drafter_checkpoint(out_dir, config, drafter.part_state_dicts(), safetensors)
    return out_dir
