"""Reading published checkpoint folders: configs, weight files, the base path.

Pickled ``.pt``/``.bin`` files are only ever read with ``weights_only=True``.
Every error names the file and what to do about it.
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Optional

import torch

BASE_OVERRIDE_ENV = "FASTCHAT_SPEC_BASE_MODEL"


def read_config(path: str) -> Optional[dict]:
    """The folder's config.json as a dict, or None when there is none."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        return None
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); restore the checkpoint's config.json") from None


def load_tensors(file: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or a pickled file (weights only)."""
    if not os.path.isfile(file):
        raise FileNotFoundError(f"weight file {file} is missing; copy it from the checkpoint or re-run training")
    try:
        if file.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(file)
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # garbage bytes, not a pickle of foreign objects
            raise ValueError(f"weight file {file} could not be read (UnpicklingError); "
                             "it is corrupt or truncated: download or train it again") from None
        raise ValueError(f"weight file {file} holds Python objects besides tensors and is refused for safety "
                         f"(only weights_only=True loads are allowed); re-save it as a plain state dict of "
                         "tensors or as .safetensors") from None
    except Exception as e:  # the file is there but unreadable: say so, never guess another format
        raise ValueError(f"weight file {file} could not be read ({type(e).__name__}: {e}); "
                         "it is corrupt or truncated: download or train it again") from None
    if not isinstance(state, dict):
        raise ValueError(f"weight file {file} holds a {type(state).__name__}, not a state dict")
    return state


def first_existing(path: str, names: list[str]) -> Optional[str]:
    for name in names:
        file = os.path.join(path, name)
        if os.path.exists(file):
            return file
    return None


def prefixed_tensors(path: str, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose names start with ``prefix`` from a full (possibly sharded) HF checkpoint."""
    index = first_existing(path, ["model.safetensors.index.json", "pytorch_model.bin.index.json"])
    if index:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted({v for k, v in weight_map.items() if k.startswith(prefix)})
    else:
        single = first_existing(path, ["model.safetensors", "pytorch_model.bin"])
        if single is None:
            raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")
        files = [os.path.basename(single)]
    out = {}
    for name in files:
        state = load_tensors(os.path.join(path, name))
        out.update({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return out


def resolve_base_path(ckpt_path: str, config: dict) -> str:
    """Where the base model lives: the override variable, a path relative to the checkpoint, or a hub id."""
    override = os.environ.get(BASE_OVERRIDE_ENV)
    if override:
        return override
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{os.path.join(ckpt_path, 'config.json')} has no base_model_name_or_path; "
                         f"add it or set {BASE_OVERRIDE_ENV}=/path/to/base")
    if os.path.isabs(base):
        return base
    relative = os.path.normpath(os.path.join(ckpt_path, base))
    if os.path.isdir(relative):
        return relative
    if os.path.isdir(base):
        return os.path.abspath(base)
    return base  # a hub id: loaded as Hugging Face does; offline machines need it in the local cache


def check_drafter_fits(name: str, hidden: int, vocab: Optional[int], base_config, file: str) -> None:
    base_hidden = base_config.hidden_size
    base_vocab = base_config.vocab_size
    if hidden != base_hidden:
        raise ValueError(f"{name} in {file} expect hidden size {hidden} but the base model has {base_hidden}; "
                         f"point base_model_name_or_path (or {BASE_OVERRIDE_ENV}) at the base they were trained on")
    if vocab is not None and vocab != base_vocab:
        raise ValueError(f"{name} in {file} predict {vocab} tokens but the base vocabulary has {base_vocab}; "
                         f"point base_model_name_or_path (or {BASE_OVERRIDE_ENV}) at the base they were trained on")


def write_drafter_checkpoint(out_dir: str, config: dict, parts: dict, safetensors: bool = True) -> list[str]:
    """Write ``config.json`` and one weight file per part (``{name}.safetensors`` or ``{name}.pt``).

    ``parts`` maps a file stem (``medusa_lm_head``, ``trimlp``...) to its state dict.
    Returns the written weight files.
    """
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    files = []
    for name, state in parts.items():
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        if safetensors:
            from safetensors.torch import save_file

            file = os.path.join(out_dir, f"{name}.safetensors")
            save_file(state, file)
        else:
            file = os.path.join(out_dir, f"{name}.pt")
            torch.save(state, file)
        files.append(file)
    return files
