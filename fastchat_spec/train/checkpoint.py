"""What a trained checkpoint folder records about its base: its path, tokenizer, chat template and dtype.

The adapters (``fastchat_spec/adapters``) write and read the method's own
files; these helpers fill in what every trainer's checkpoint shares, so that
FastChat serves it with the base's tokenizer and conversation template (the
template the base is served with, by ``fastchat_spec.conversation``'s rule).
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch

SAVE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def without_prefix(state: dict, prefix: str) -> dict:
    """The entries of a training module's state dict under ``prefix`` (e.g. ``"heads."``), prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def base_reference(base_path: str, out_dir: str, style: str) -> str:
    """How a checkpoint names its base: a hub id as is, a local folder relative to the checkpoint or absolute."""
    if not os.path.isdir(base_path):
        return base_path  # a hub id
    if style == "absolute":
        return os.path.abspath(base_path)
    return os.path.relpath(os.path.abspath(base_path), os.path.abspath(out_dir))


def copy_tokenizer_files(src: str, dst: str) -> None:
    """Tokenizer files of the base folder next to a heads-only checkpoint (FastChat loads them from there)."""
    import shutil

    if not os.path.isdir(src):
        return
    for name in os.listdir(src):
        if name.startswith(("tokenizer", "special_tokens_map", "added_tokens")) or name.endswith(".model"):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def write_heads_only(write: Callable, out_dir: str, heads, base_path: str, path_style: str, tree,
                     conv_template: str | None, **kwargs) -> None:
    """A heads-only checkpoint through the adapter's ``write(out_dir, heads, base_ref, tree=, extra_config=)``,
    with the base's tokenizer files and conversation template."""
    extra = {"fastchat_conv_template": conv_template} if conv_template else {}
    write(out_dir, heads, base_reference(base_path, out_dir, path_style), tree=tree, extra_config=extra, **kwargs)
    copy_tokenizer_files(base_path, out_dir)


def stored_dtype(config) -> torch.dtype:
    """The dtype a checkpoint's config says its weights were saved in; float32 when unknown."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32
