"""The shape every fastchat-spec adapter shares with FastChat's own adapters.

``SpecAdapter`` has the methods of FastChat's ``BaseModelAdapter`` (it does not
inherit from it, so that importing our adapters never imports FastChat's
adapter module, whose import is what triggers our hook): ``match`` looks at
the checkpoint's contents (never just its folder name), ``load_model`` loads
the base through the FastChat adapter that stock FastChat would use for it,
then the method's drafter, and ``get_default_conv_template`` is the base's
(``fastchat_spec/conversation.py``). A model path is a checkpoint folder or
its Hugging Face hub id (``checkpoint_folder``: the config, tokenizer and
drafter files of its snapshot in the Hugging Face cache).
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Callable, Optional

import torch
from safetensors import SafetensorError

from fastchat_spec.adapters.checkpoint import (cached_checkpoint_folder, check_base_path, checkpoint_folder,
                                               explain_load_failure, read_config, resolve_base_path)
from fastchat_spec.conversation import conversation_template
from fastchat_spec.spec_model import SPLIT_BASE_WARNING, SpecConfig, SpecModel, base_devices, split_base

QUANTIZE_ENV = "FASTCHAT_SPEC_QUANTIZE"  # "4bit" or "8bit": load the base with bitsandbytes
# What Hugging Face raises for a model folder it cannot read (missing, broken or mismatched files).
LOAD_ERRORS = (OSError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError)


def fastchat_adapter_for(path: str):
    """FastChat's own adapter for a plain model path, skipping ours."""
    from fastchat.model import model_adapter
    from fastchat.model.model_adapter import BaseModelAdapter

    candidates = [a for a in model_adapter.model_adapters if not isinstance(a, SpecAdapter)]
    basename = os.path.basename(os.path.normpath(path))
    for adapter in candidates:
        if adapter.match(basename) and type(adapter) is not BaseModelAdapter:
            return adapter
    for adapter in candidates:
        if adapter.match(path):
            return adapter
    return BaseModelAdapter()


class SpecAdapter:
    method = ""
    use_fast_tokenizer = False
    name_prefixes: tuple[str, ...] = ()

    # -- what each method provides -----------------------------------------
    def detect(self, config: dict, path: str) -> bool:
        raise NotImplementedError

    def spec_config(self, config: dict, path: str) -> SpecConfig:
        raise NotImplementedError

    def load_drafter(self, path: str, config: dict, spec: SpecConfig, base) -> Optional[torch.nn.Module]:
        raise NotImplementedError

    def base_path(self, path: str, config: dict) -> str:
        return resolve_base_path(path, config)

    def checkpoint(self, model_path: str, revision: Optional[str] = None) -> tuple[str, dict]:
        """The checkpoint's local folder (a hub id's snapshot, fetched if need be) and its config.json."""
        folder = checkpoint_folder(model_path, self.method, revision)
        return folder, read_config(folder) or {}

    def loaded_base_path(self, model_path: str, folder: str, config: dict) -> str:
        """``base_path`` of the checkpoint in ``folder``, which ``model_path`` named.

        A hub checkpoint that is its own base (CLLM, a Medusa-2 full checkpoint)
        keeps its hub id as base: its snapshot came without the weights, and
        Hugging Face fetches (or finds cached) the ones it loads, as for any
        model, into the same snapshot folder.
        """
        base = self.base_path(folder, config)
        return model_path if folder != model_path and base == folder else base

    # -- FastChat's adapter interface -----------------------------------------
    def match(self, model_path: str) -> bool:
        if os.path.isdir(model_path):
            config = read_config(model_path)
            return config is not None and self.detect(config, model_path)
        # A bare model name (FastChat's Gradio server picks templates by worker name).
        return os.path.basename(model_path).lower().startswith(self.name_prefixes)

    def load_model(self, model_path: str, from_pretrained_kwargs: dict):
        folder, config = self.checkpoint(model_path, from_pretrained_kwargs.get("revision"))
        spec = self.spec_config(config, folder)
        base_path = self.loaded_base_path(model_path, folder, config)
        kwargs = dict(from_pretrained_kwargs)
        _add_quantization(kwargs)
        base, tokenizer = load_base(model_path, base_path,
                                    lambda: fastchat_adapter_for(base_path).load_model(base_path, kwargs))
        drafter = self.load_drafter(folder, config, spec, base)
        if drafter is not None:
            lm_head = base.get_output_embeddings().weight
            dtype = lm_head.dtype if lm_head.dtype.is_floating_point else torch.float16
            drafter.to(device=lm_head.device, dtype=dtype).eval()
        return warned_if_split(SpecModel(base.eval(), drafter, spec), model_path), tokenizer

    def load_compress_model(self, model_path, device, torch_dtype, revision="main"):
        """FastChat's --load-8bit (``BaseModelAdapter.load_compress_model``'s signature): compress the base as
        FastChat does, with its tokenizer as the base's own adapter loads it; keep the drafter as is."""
        from fastchat.model.compression import load_compress_model

        folder, config = self.checkpoint(model_path, revision)
        spec = self.spec_config(config, folder)
        base_path = self.loaded_base_path(model_path, folder, config)
        use_fast = fastchat_adapter_for(base_path).use_fast_tokenizer
        base, tokenizer = load_base(model_path, base_path, lambda: load_compress_model(
            base_path, device, torch_dtype, use_fast=use_fast, revision=revision))
        drafter = self.load_drafter(folder, config, spec, base)
        if drafter is not None:
            drafter.to(device=device, dtype=torch_dtype).eval()
        return warned_if_split(SpecModel(base.eval(), drafter, spec), model_path), tokenizer

    def get_default_conv_template(self, model_path: str):
        folder = cached_checkpoint_folder(model_path)  # never fetches: the name may be a worker's model name
        if folder is not None:
            return conversation_template(folder, self.loaded_base_path(model_path, folder, read_config(folder) or {}))
        # A bare model name (FastChat's Gradio server), or a hub id not cached yet: the base's name follows our prefix.
        name = os.path.basename(model_path)
        for prefix in self.name_prefixes:
            if name.lower().startswith(prefix):
                name = name[len(prefix):]
                break
        return conversation_template(name, base_path=name)


def warned_if_split(model: SpecModel, model_path: str) -> SpecModel:
    """``model``, after saying in the worker's log that it will decode unsped if its base is split."""
    if split_base(model):
        places = ", ".join(sorted(base_devices(model)))
        logging.getLogger("fastchat_spec").warning(SPLIT_BASE_WARNING.format(path=model_path, places=places))
    return model


def load_base(model_path: str, base_path: str, load: Callable[[], tuple]):
    """``load()`` the base of checkpoint ``model_path``; when it fails, the error names the file at fault.

    Hugging Face's own errors often name no file (a truncated safetensors, a
    config that does not fit the weights, a missing tokenizer), so on failure
    the base's folder is examined; when nothing there explains it, the original
    error is raised unchanged.
    """
    check_base_path(model_path, base_path)
    try:
        return load()
    except LOAD_ERRORS as error:
        explained = explain_load_failure(base_path, model_path, error)
        if explained is None:
            raise
        raise explained from error


def _add_quantization(kwargs: dict) -> None:
    mode = os.environ.get(QUANTIZE_ENV, "").strip().lower()
    if not mode:
        return
    if mode not in ("4bit", "8bit"):
        raise ValueError(f"{QUANTIZE_ENV} must be 4bit or 8bit, got {mode!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"{QUANTIZE_ENV}={mode} needs a CUDA GPU (bitsandbytes); unset it to load on CPU")
    from transformers import BitsAndBytesConfig

    if mode == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=kwargs.get("torch_dtype", torch.float16),
            bnb_4bit_quant_type="nf4")
    else:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    kwargs.setdefault("device_map", {"": 0})
