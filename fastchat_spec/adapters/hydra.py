"""Hydra / Hydra++ checkpoints in the published layout (``zankner/Hydra``).

A checkpoint folder holds:

* ``config.json`` with ``hydra_num_heads``, ``hydra_num_layers``,
  ``hydra_head_arch`` ("mlp" or "prefix-mlp" for Hydra++), ``grounded_heads``,
  ``hidden_state_offset`` and ``base_model_name_or_path``; ours may add
  ``hydra_choices`` (the tree) and ``fastchat_conv_template``.
* ``hydra_lm_head.pt`` (pickled, read with ``weights_only=True``) or
  ``hydra_lm_head.safetensors``: the state dict of the heads module, with keys
  ``hydra_mlp.{i}.{j}.linear.*`` / ``.res_connection.*``,
  ``hydra_lm_head.{i}[.1].{weight,bias}`` and, for Hydra++,
  ``prefix_embeding_layer.{layers.0.*,norm.weight}``. The published files also
  carry copies of the base embeddings, which we skip (the base's own are used).
"""
from __future__ import annotations

import os
import re

from fastchat_spec.adapters.base import SpecAdapter
from fastchat_spec.adapters.checkpoint import (
    write_drafter_checkpoint,
    check_drafter_fits,
    config_int,
    first_existing,
    load_tensors,
)
from fastchat_spec.heads.hydra import ARCHS, BASE_COPIES, HydraHeads
from fastchat_spec.spec_model import SpecConfig

HEAD_FILES = ["hydra_lm_head.safetensors", "hydra_lm_head.pt"]
_MLP_KEY = re.compile(r"^hydra_mlp\.(\d+)\.(\d+)\.(linear|res_connection)\.(weight|bias)$")


class HydraAdapter(SpecAdapter):
    method = "hydra"
    name_prefixes = ("hydra-",)
    use_fast_tokenizer = False

    def detect(self, config, path):
        return "hydra_num_heads" in config

    def spec_config(self, config, path):
        arch = str(config.get("hydra_head_arch", "mlp"))
        _check_supported(config, path, arch)
        return SpecConfig(
            method="hydra",
            num_heads=config_int(config, "hydra_num_heads", path),
            num_layers=config_int(config, "hydra_num_layers", path, default=1),
            tree=config.get("hydra_choices") or config.get("spec_tree"),
            options={"hydra_head_arch": arch},
        )

    def load_drafter(self, path, config, spec, base):
        file = first_existing(path, HEAD_FILES)
        if file is None:
            raise FileNotFoundError(f"no Hydra head weights in {path}: expected one of {HEAD_FILES}; "
                                    "copy the file from the checkpoint or re-run fastchat_spec.train.hydra")
        state = {k: v for k, v in load_tensors(file).items() if k not in BASE_COPIES}
        arch = spec.options["hydra_head_arch"]
        heads, layers, grounded, hidden, vocab = _shape_from_keys(state, file, arch)
        check_drafter_fits("Hydra heads", hidden, vocab, base.config, file)
        spec.num_heads, spec.num_layers = heads, layers  # the weights are the truth
        drafter = HydraHeads(base.config, heads, layers, arch=arch, grounded=grounded)
        _load_strict(drafter, state, file)
        return drafter


def _check_supported(config: dict, path: str, arch: str) -> None:
    where = os.path.join(path, "config.json")
    if arch not in ARCHS:
        raise NotImplementedError(f"{where}: hydra_head_arch={arch!r} is not supported; "
                                  f"fastchat-spec runs {ARCHS}")
    if config_int(config, "hidden_state_offset", path, default=0, minimum=0) != 0:
        raise NotImplementedError(
            f"{where}: hidden_state_offset={config['hidden_state_offset']} (heads fed from an earlier layer) "
            "is not supported; fastchat-spec feeds the heads the last hidden state (hidden_state_offset=0)")


def _shape_from_keys(state: dict, file: str, arch: str):
    """Heads, layers per head, grounded or not, hidden size and vocab size from the tensors."""
    blocks: dict[int, set[int]] = {}
    for key in state:
        m = _MLP_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks:
        raise ValueError(f"Hydra head file {file} holds no hydra_mlp weights; is it a Hydra checkpoint?")
    heads = len(blocks)
    if set(blocks) != set(range(heads)):
        raise ValueError(f"Hydra head file {file} has gaps in its head indices: {sorted(blocks)}")
    layers = len(blocks[0])
    first = min(blocks[0])
    grounded = f"hydra_mlp.0.{first}.res_connection.weight" in state
    if f"hydra_mlp.0.{first}.linear.weight" not in state:
        raise ValueError(f"Hydra head file {file} has no hydra_mlp.0.{first}.linear.weight; it is incomplete: "
                         "download or train it again")
    hidden = state[f"hydra_mlp.0.{first}.linear.weight"].shape[0]
    lm_key = "hydra_lm_head.0.1.weight" if arch == "prefix-mlp" else "hydra_lm_head.0.weight"
    if lm_key not in state:
        other = "mlp" if arch == "prefix-mlp" else "prefix-mlp"
        raise ValueError(f"Hydra head file {file} has no {lm_key}: it does not match hydra_head_arch={arch!r} "
                         f"in config.json (try {other!r}) or it is incomplete")
    vocab = state[lm_key].shape[0]
    return heads, layers, grounded, hidden, vocab


def _load_strict(drafter: HydraHeads, state: dict, file: str) -> None:
    try:
        result = drafter.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise ValueError(f"Hydra head file {file} does not match the architecture in config.json: {e}; "
                         "check hydra_head_arch and grounded_heads, or download or train it again") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"Hydra head file {file} does not match the architecture in config.json: "
                         f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; "
                         "check hydra_head_arch, hydra_num_layers and grounded_heads")


def write_hydra_checkpoint(out_dir: str, heads: HydraHeads, base_model_name_or_path: str, tree=None,
                           extra_config: dict | None = None, safetensors: bool = True) -> str:
    """Save heads in the published layout (config.json + hydra_lm_head.{safetensors,pt}); returns the folder."""
    state = heads.state_dict()
    config = {
        "base_model_name_or_path": base_model_name_or_path,
        "hydra_num_heads": heads.num_heads,
        "hydra_num_layers": heads.num_layers,
        "hydra_head_arch": heads.arch,
        "grounded_heads": heads.grounded,
        "hidden_state_offset": 0,
    }
    if tree:
        config["hydra_choices"] = [list(p) for p in tree]
    config.update(extra_config or {})
    write_drafter_checkpoint(out_dir, config, {"hydra_lm_head": state}, safetensors)
    return out_dir
