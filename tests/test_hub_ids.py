"""A checkpoint's Hugging Face hub id as ``--model-path``, offline: it loads from the Hugging Face cache.

``python -m fastchat.serve.model_worker --model-path FasterDecoding/medusa-vicuna-7b-v1.3``
goes through FastChat's ``load_model`` with the hub id. Nothing here reaches a
model hub: each test builds a Hugging Face cache under ``tmp_path``
(``models--{org}--{name}/refs/main`` and ``snapshots/{commit}/``, as a download
leaves it) and sets HF_HUB_OFFLINE. The hub id then loads the same model as the
folder it was copied from; a folder without config.json, a missing folder and
a hub id that is not cached each fail with an error that says which it is.
One test stands a fake hub in for ``snapshot_download`` to show what an online
fetch asks for: config, tokenizer and drafter files, not the base's weights.
"""
from __future__ import annotations

import json
import os
import shutil

import huggingface_hub
import pytest
import torch
import transformers.utils.hub
from fastchat.model.model_adapter import (get_conversation_template, get_generate_stream_function,
                                          get_model_adapter, load_model)
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file, save_file

from fastchat_spec.adapters.checkpoint import HUB_IGNORE_PATTERNS
from tests.tiny import CONTEXT, PROMPTS, greedy, published_medusa_tensors

pytestmark = pytest.mark.usefixtures("one_thread", "no_base_override")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MEDUSA_ID = "someorg/medusa-vicuna-tiny"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> str:
    """An empty Hugging Face cache, offline. huggingface_hub and transformers read both settings when they
    are imported, so their module copies are set too."""
    cache = str(tmp_path / "hf-cache")
    os.makedirs(cache)
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", cache)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True)
    return cache


def _snapshot_dir(cache: str, repo_id: str) -> str:
    return os.path.join(cache, "models--" + repo_id.replace("/", "--"), "snapshots", COMMIT)


def _cache(cache: str, repo_id: str, source: str, skip: tuple[str, ...] = ()) -> str:
    """``source``'s files as the cached snapshot of ``repo_id`` at ``COMMIT``; returns the snapshot folder."""
    snapshot = _snapshot_dir(cache, repo_id)
    shutil.copytree(source, snapshot, ignore=lambda _, names: [n for n in names if n in skip])
    refs = os.path.join(cache, "models--" + repo_id.replace("/", "--"), "refs")
    os.makedirs(refs)
    with open(os.path.join(refs, "main"), "w") as f:
        f.write(COMMIT)  # huggingface_hub reads the ref as is: no newline
    return snapshot


def _greedy_texts(model, tok, path: str, prompts=PROMPTS[:2]) -> list[str]:
    stream = get_generate_stream_function(model, path)
    return [list(stream(model, tok, greedy(p), "cpu", CONTEXT))[-1]["text"] for p in prompts]


def _heads(model) -> dict:
    return {k: v.clone() for k, v in model.drafter.state_dict().items()}


# -- a cached hub id loads what its folder loads ---------------------------------------------


def test_medusa_hub_id_loads_from_the_cache(hf_cache, medusa_dir, stock_texts):
    with open(os.path.join(medusa_dir, "config.json")) as f:
        assert os.path.isabs(json.load(f)["base_model_name_or_path"])
    _cache(hf_cache, MEDUSA_ID, medusa_dir)
    assert type(get_model_adapter(MEDUSA_ID)).__name__ == "MedusaAdapter"
    model, tok = load_model(MEDUSA_ID, device="cpu")
    assert type(model).__name__ == "SpecModel"
    assert model.spec.method == "medusa" and model.spec.num_heads == 3 and model.drafter.num_heads == 3
    local, _ = load_model(medusa_dir, device="cpu")
    heads, local_heads = _heads(model), _heads(local)
    assert heads.keys() == local_heads.keys() and all(torch.equal(heads[k], local_heads[k]) for k in heads)
    assert _greedy_texts(model, tok, MEDUSA_ID) == [stock_texts[p] for p in PROMPTS[:2]]
    assert get_conversation_template(MEDUSA_ID).name == get_conversation_template(medusa_dir).name


def test_medusa2_full_checkpoint_hub_id(hf_cache, base_dir, base_shape, stock_texts):
    """A full checkpoint is its own base: Hugging Face loads it by the hub id, the heads come from its weights."""
    source = os.path.join(os.path.dirname(hf_cache), "medusa-1.0-vicuna-tiny")
    shutil.copytree(base_dir, source)
    with open(os.path.join(base_dir, "config.json")) as f:
        config = {**json.load(f), "medusa_num_heads": 2, "medusa_num_layers": 1}
    with open(os.path.join(source, "config.json"), "w") as f:
        json.dump(config, f)
    tensors = load_file(os.path.join(base_dir, "model.safetensors"))
    tensors.update({f"medusa_head.{k}": v for k, v in published_medusa_tensors(*base_shape, heads=2).items()})
    save_file(tensors, os.path.join(source, "model.safetensors"), metadata={"format": "pt"})
    repo_id = "someorg/medusa-1.0-vicuna-tiny"
    _cache(hf_cache, repo_id, source)
    model, tok = load_model(repo_id, device="cpu")
    assert model.spec.method == "medusa" and model.drafter.num_heads == 2
    assert model.base.config._name_or_path == repo_id  # loaded by its hub id, not the snapshot path
    assert _greedy_texts(model, tok, repo_id) == [stock_texts[p] for p in PROMPTS[:2]]


def test_cllm_hub_id_loads_its_full_weights(hf_cache, base_dir, base_model, stock_texts):
    repo_id = "cllm/consistency-llm-vicuna-tiny"
    _cache(hf_cache, repo_id, base_dir)
    assert type(get_model_adapter(repo_id)).__name__ == "CllmAdapter"
    model, tok = load_model(repo_id, device="cpu")
    assert model.spec.method == "cllm" and model.drafter is None
    assert model.base.config._name_or_path == repo_id
    loaded, expected = model.base.state_dict(), base_model.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert _greedy_texts(model, tok, repo_id, PROMPTS[:1]) == [stock_texts[PROMPTS[0]]]
    assert get_conversation_template(repo_id).name == "cllm"


def test_an_uncached_hub_id_keeps_the_bare_name_template(hf_cache):
    """FastChat's web server asks with worker names; a template lookup fetches nothing and raises nothing."""
    name = "someorg/medusa-vicuna-7b-v1.3"
    assert get_conversation_template(name).name == get_conversation_template("vicuna-7b-v1.3").name
    assert not os.listdir(hf_cache)


# -- what goes wrong, said plainly ---------------------------------------------------------------


def test_folder_without_config_json(tmp_path, medusa_dir):
    """A training run killed before it saved: the folder is there, config.json is not."""
    killed = str(tmp_path / "medusa-vicuna-run")
    shutil.copytree(medusa_dir, killed, ignore=lambda _, names: ["config.json"])
    assert type(get_model_adapter(killed)).__name__ == "MedusaAdapter"  # by its name: it has no config to read
    with pytest.raises(FileNotFoundError, match=f"{killed} has no config.json: it is not a medusa checkpoint "
                                                r"folder \(a training run that was stopped before it saved"):
        load_model(killed, device="cpu")


def test_missing_local_folder(tmp_path):
    missing = str(tmp_path / "medusa-vicuna-gone")
    with pytest.raises(FileNotFoundError, match=f"no such folder: {missing}"):
        load_model(missing, device="cpu")


def test_uncached_hub_id_offline(hf_cache):
    repo_id = "someorg/medusa-never-downloaded"
    with pytest.raises(OSError, match=f"{repo_id} is neither a local folder nor in the Hugging Face cache "
                                      r"\(.*\), and HF_HUB_OFFLINE is set") as info:
        load_model(repo_id, device="cpu")
    assert isinstance(info.value.__cause__, LocalEntryNotFoundError)


def test_hub_id_that_cannot_be_fetched_online(hf_cache, monkeypatch):
    repo_id = "someorg/medusa-typo"

    def not_found(repo_id, **kwargs):
        raise RepositoryNotFoundError(f"404 Client Error. Repository Not Found for url: .../{repo_id}")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    with pytest.raises(OSError, match=f"{repo_id} is neither a local folder nor in the Hugging Face cache .*"
                                      "fetching it from the Hugging Face hub failed .*Repository Not Found") as info:
        load_model(repo_id, device="cpu")
    assert isinstance(info.value.__cause__, RepositoryNotFoundError)


def test_cached_hub_id_without_config_json(hf_cache, medusa_dir):
    repo_id = "someorg/medusa-heads-only"
    snapshot = _cache(hf_cache, repo_id, medusa_dir, skip=("config.json",))
    with pytest.raises(FileNotFoundError, match=f"{repo_id} \\(its Hugging Face snapshot {snapshot}\\) has no "
                                                "config.json: it is not a medusa checkpoint folder"):
        load_model(repo_id, device="cpu")


# -- online: what a fetch asks for (a fake hub stands in for snapshot_download) -------------------


def test_online_fetch_skips_the_base_weights(hf_cache, medusa_dir, base_dir, monkeypatch, stock_texts):
    remote = os.path.join(os.path.dirname(hf_cache), "remote")
    shutil.copytree(medusa_dir, remote)
    shutil.copy(os.path.join(base_dir, "tokenizer.model"), remote)
    for name in ("model.safetensors", "pytorch_model.bin", "tf_model.h5"):  # never read: their bytes do not matter
        with open(os.path.join(remote, name), "wb") as f:
            f.write(b"base weights")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, ignore_patterns=None, local_files_only=False, **kwargs):
        calls.append((repo_id, revision, local_files_only))
        names = filter_repo_objects(sorted(os.listdir(remote)), ignore_patterns=ignore_patterns)
        snapshot = _snapshot_dir(hf_cache, repo_id)
        os.makedirs(snapshot, exist_ok=True)
        for name in names:
            shutil.copy(os.path.join(remote, name), snapshot)
        return snapshot

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model, tok = load_model(MEDUSA_ID, device="cpu", revision="main")
    assert calls == [(MEDUSA_ID, "main", False)]
    assert sorted(os.listdir(_snapshot_dir(hf_cache, MEDUSA_ID))) == ["config.json", "medusa_lm_head.pt",
                                                                      "tokenizer.model"]
    assert model.drafter.num_heads == 3
    assert _greedy_texts(model, tok, MEDUSA_ID, PROMPTS[:1]) == [stock_texts[PROMPTS[0]]]


def test_ignore_patterns_keep_every_drafter_file():
    from fastchat_spec.adapters import chimera, hydra, medusa

    drafter_files = medusa.HEAD_FILES + hydra.HEAD_FILES + [f for name in ("trimlp", "fast_layer1", "chimera_head")
                                                            for f in chimera.part_files(name)]
    kept = ["config.json", "generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "model.safetensors.index.json", *drafter_files]
    left_out = ["model.safetensors", "model-00001-of-00002.safetensors", "pytorch_model.bin",
                "pytorch_model-00001-of-00002.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot",
                "model.onnx", "consolidated.00.pth", "optimizer.pt"]
    assert list(filter_repo_objects(kept + left_out, ignore_patterns=HUB_IGNORE_PATTERNS)) == kept
