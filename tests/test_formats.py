"""The three published Medusa layouts load through FastChat's ``load_model`` and stay exact.

Every checkpoint here is written by hand from raw tensors (``torch.save`` /
``safetensors.save_file`` + json), the way the published ones are laid out,
not through our own writer, so that the loader is tested against the format
rather than against itself:

* Medusa-1 v0.1 (``FasterDecoding/medusa-vicuna-7b-v1.3``): a config with only
  ``base_model_name_or_path``, ``medusa_num_heads``, ``medusa_num_layers``, and
  ``medusa_lm_head.pt`` with ``{h}.{j}.linear.weight|bias`` and ``{h}.{L}.weight``;
* Medusa-2 "1.0" full checkpoints: the base config plus the medusa keys, and
  ``medusa_head.{h}...`` tensors next to the base weights (single file and sharded);
* heads-only safetensors without per-head lm_heads (the base lm_head is shared).
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from fastchat.model.model_adapter import (
    get_generate_stream_function,
    get_model_adapter,
    load_model,
)
from safetensors.torch import load_file, save_file

from tests.tiny import CONTEXT, PROMPTS, greedy, published_medusa_tensors

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def _assert_loads_and_matches(path: str, stock_texts, heads: int) -> None:
    assert type(get_model_adapter(path)).__name__ == "MedusaAdapter"
    model, tok = load_model(path, device="cpu")
    assert type(model).__name__ == "SpecModel"
    assert model.spec.method == "medusa" and model.spec.num_heads == heads
    stream = get_generate_stream_function(model, path)
    assert stream.__module__ == "fastchat_spec.generate.stream"
    for prompt in PROMPTS[:3]:
        assert list(stream(model, tok, greedy(prompt), "cpu", CONTEXT))[-1]["text"] == stock_texts[prompt], prompt


# -- (a) Medusa-1 v0.1 ------------------------------------------------------------------


def _write_v01(out: str, base: str, hidden: int, vocab: int, heads: int = 3, layers: int = 1,
               config_heads: int | None = None) -> str:
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, "config.json"), {
        "base_model_name_or_path": base, "medusa_num_heads": config_heads or heads, "medusa_num_layers": layers})
    torch.save(published_medusa_tensors(hidden, vocab, heads, layers), os.path.join(out, "medusa_lm_head.pt"))
    return out


@pytest.mark.parametrize("layers", [1, 2])
def test_medusa1_v01_layout(tmp_path, base_dir, base_shape, stock_texts, no_base_override, layers):
    ckpt = _write_v01(os.path.join(tmp_path, "medusa-vicuna-tiny-v0.1"), base_dir, *base_shape, layers=layers)
    _assert_loads_and_matches(ckpt, stock_texts, heads=3)


def test_head_count_comes_from_the_weights(tmp_path, base_dir, base_shape, stock_texts, no_base_override):
    """Published configs sometimes say 5 heads for files that hold 3 (or the reverse)."""
    ckpt = _write_v01(os.path.join(tmp_path, "medusa-disagrees"), base_dir, *base_shape, heads=3, config_heads=5)
    _assert_loads_and_matches(ckpt, stock_texts, heads=3)


def test_relative_base_path(tmp_path, base_dir, base_shape, stock_texts, no_base_override):
    base_copy = os.path.join(tmp_path, "vicuna-tiny")
    shutil.copytree(base_dir, base_copy)
    ckpt = _write_v01(os.path.join(tmp_path, "medusa-relative"), "../vicuna-tiny", *base_shape)
    _assert_loads_and_matches(ckpt, stock_texts, heads=3)


def test_base_path_override_from_the_environment(tmp_path, base_dir, base_shape, stock_texts, monkeypatch):
    """A published config names a hub id; FASTCHAT_SPEC_BASE_MODEL points at a local copy."""
    ckpt = _write_v01(os.path.join(tmp_path, "medusa-vicuna-7b-v1.3"), "lmsys/vicuna-7b-v1.3", *base_shape)
    monkeypatch.setenv("FASTCHAT_SPEC_BASE_MODEL", base_dir)
    _assert_loads_and_matches(ckpt, stock_texts, heads=3)


@pytest.mark.parametrize("name", ["checkpoint-100", "medusa-vicuna-7b-v1.3", "vicuna-7b-v1.3-medusa",
                                  "Llama-2-7b-chat-medusa", "zephyr-medusa-heads"])
def test_adapter_is_picked_by_content_whatever_the_folder_name(tmp_path, base_dir, base_shape, no_base_override, name):
    """FastChat matches folder names first (``vicuna`` -> Vicuna adapter): a Medusa folder
    must still get the Medusa adapter, and load."""
    ckpt = _write_v01(os.path.join(tmp_path, name), base_dir, *base_shape)
    assert type(get_model_adapter(ckpt)).__name__ == "MedusaAdapter"
    model, _ = load_model(ckpt, device="cpu")
    assert type(model).__name__ == "SpecModel"


# -- (b) Medusa-2 "1.0" full checkpoints ---------------------------------------------------


def _write_full(out: str, base_dir: str, hidden: int, vocab: int, heads: int = 4, shards: int = 1) -> str:
    """The base's own config and weights, plus medusa keys and ``medusa_head.*`` tensors."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(base_dir, "config.json")) as f:
        config = json.load(f)
    config.update({"medusa_num_heads": heads, "medusa_num_layers": 1})
    _write_json(os.path.join(out, "config.json"), config)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(base_dir, name), out)
    tensors = load_file(os.path.join(base_dir, "model.safetensors"))
    tensors.update({f"medusa_head.{k}": v for k, v in
                    published_medusa_tensors(hidden, vocab, heads, seed=7).items()})
    if shards == 1:
        save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        return out
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in names[i::shards]}
        save_file(part, os.path.join(out, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(os.path.join(out, "model.safetensors.index.json"),
                {"metadata": {"total_size": total}, "weight_map": weight_map})
    return out


@pytest.mark.parametrize("shards", [1, 2])
def test_medusa2_full_checkpoint(tmp_path, base_dir, base_shape, stock_texts, no_base_override, shards):
    ckpt = _write_full(os.path.join(tmp_path, f"medusa-1.0-vicuna-tiny-{shards}"), base_dir, *base_shape,
                       shards=shards)
    _assert_loads_and_matches(ckpt, stock_texts, heads=4)


# -- (c) heads-only safetensors ------------------------------------------------------------


def test_heads_only_safetensors_share_the_base_lm_head(tmp_path, base_dir, base_shape, stock_texts, no_base_override):
    ckpt = os.path.join(tmp_path, "checkpoint-100")
    os.makedirs(ckpt)
    _write_json(os.path.join(ckpt, "config.json"),
                {"base_model_name_or_path": base_dir, "medusa_num_heads": 2, "medusa_num_layers": 1})
    save_file(published_medusa_tensors(*base_shape, heads=2, own_lm_head=False),
              os.path.join(ckpt, "medusa_lm_head.safetensors"))
    _assert_loads_and_matches(ckpt, stock_texts, heads=2)
    model, _ = load_model(ckpt, device="cpu")
    assert not model.drafter.own_lm_head
