"""Bad requests and broken checkpoints fail early, with messages a user can act on."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from fastchat.model.model_adapter import get_generate_stream_function, load_model

from fastchat_spec.adapters.medusa import write_medusa_checkpoint
from fastchat_spec.heads.medusa import MedusaHeads
from tests import tiny

CONTEXT = 1024


@pytest.fixture(scope="module")
def spec(medusa_dir):
    model, tok = load_model(medusa_dir, device="cpu")
    return model, tok, get_generate_stream_function(model, medusa_dir)


def _first(spec, params, context=CONTEXT):
    model, tok, stream = spec
    return next(stream(model, tok, {"prompt": "Hello world", "max_new_tokens": 8, **params}, "cpu", context))


@pytest.mark.parametrize("params,message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be > 0"),
    ({"max_new_tokens": -3}, "max_new_tokens must be > 0"),
    ({"max_new_tokens": CONTEXT}, f"does not fit the model's context of {CONTEXT}"),
    ({"max_new_tokens": "many"}, "max_new_tokens must be an integer"),
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
    ({"stop": 5}, "stop must be a string or a list of strings"),
    ({"stop": ["ok", 3]}, "stop must be a string or a list of strings"),
    ({"stop_token_ids": "2"}, "stop_token_ids must be a list of integers"),
    ({"stop_token_ids": [2, "x"]}, "stop_token_ids must be a list of integers"),
    ({"prompt": None}, "prompt must be a string"),
    ({"spec_options": [1]}, "spec_options must be an object"),
    ({"spec_acceptance": "fast"}, "unknown acceptance rule"),
])
def test_bad_request_raises_value_error(spec, params, message):
    with pytest.raises(ValueError, match=message):
        _first(spec, params)


def test_prompt_longer_than_the_context(spec):
    _, tok, _ = spec
    prompt = "the cat runs over the house " * 20
    n = len(tok(prompt).input_ids)
    with pytest.raises(ValueError, match=f"the prompt is {n} tokens, longer than the model's context of 64"):
        _first(spec, {"prompt": prompt}, context=64)


def test_spec_disable_validates_the_same_way(spec):
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        _first(spec, {"temperature": -1, "spec_disable": True})


def test_a_good_request_still_works_after_bad_ones(spec):
    for params in ({"stop": 5}, {"top_p": 2}):
        with pytest.raises(ValueError):
            _first(spec, params)
    model, tok, stream = spec
    out = list(stream(model, tok, {"prompt": "Hello world", "max_new_tokens": 8, "temperature": 0}, "cpu", CONTEXT))
    assert out[-1]["finish_reason"] in ("stop", "length")


# -- broken checkpoints --------------------------------------------------------------


def _checkpoint(tmp_path, base_dir, name="medusa-broken", **head_kwargs) -> str:
    out = os.path.join(str(tmp_path), name)
    write_medusa_checkpoint(out, tiny.random_medusa_heads(base_dir, 2, **head_kwargs), base_dir, safetensors=False)
    return out


def test_missing_head_file_names_the_folder_and_the_files_expected(tmp_path, base_dir):
    ckpt = _checkpoint(tmp_path, base_dir)
    os.remove(os.path.join(ckpt, "medusa_lm_head.pt"))
    with pytest.raises(FileNotFoundError, match=f"no Medusa head weights in {ckpt}.*medusa_lm_head.pt"):
        load_model(ckpt, device="cpu")


@pytest.mark.parametrize("file", ["medusa_lm_head.pt", "medusa_lm_head.safetensors"])
def test_corrupt_head_file_is_named(tmp_path, base_dir, file):
    ckpt = _checkpoint(tmp_path, base_dir)
    os.remove(os.path.join(ckpt, "medusa_lm_head.pt"))
    with open(os.path.join(ckpt, file), "wb") as f:
        f.write(b"\x00not a weight file\xff" * 10)
    with pytest.raises(ValueError, match=f"(?s)weight file {os.path.join(ckpt, file)} could not be read.*corrupt"):
        load_model(ckpt, device="cpu")


def test_truncated_head_file_is_named(tmp_path, base_dir):
    ckpt = _checkpoint(tmp_path, base_dir)
    file = os.path.join(ckpt, "medusa_lm_head.pt")
    with open(file, "rb") as f:
        data = f.read()
    with open(file, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"weight file {file} could not be read"):
        load_model(ckpt, device="cpu")


def _save_heads(ckpt: str, heads: MedusaHeads) -> str:
    file = os.path.join(ckpt, "medusa_lm_head.pt")
    torch.save({k: v.contiguous() for k, v in heads.medusa_head.state_dict().items()}, file)
    return file


def test_heads_with_another_hidden_size_are_refused(tmp_path, base_dir):
    ckpt = _checkpoint(tmp_path, base_dir)
    file = _save_heads(ckpt, MedusaHeads(hidden_size=32, vocab_size=320, num_heads=2))
    with pytest.raises(ValueError, match=f"{file} expect hidden size 32 but the base model has 64.*FASTCHAT_SPEC_BASE_MODEL"):
        load_model(ckpt, device="cpu")


def test_heads_with_another_vocabulary_are_refused(tmp_path, base_dir):
    ckpt = _checkpoint(tmp_path, base_dir)
    file = _save_heads(ckpt, MedusaHeads(hidden_size=64, vocab_size=100, num_heads=2))
    with pytest.raises(ValueError, match=f"{file} predict 100 tokens but the base vocabulary has 320"):
        load_model(ckpt, device="cpu")


def test_unexpected_tensor_in_head_file(tmp_path, base_dir):
    ckpt = _checkpoint(tmp_path, base_dir)
    file = os.path.join(ckpt, "medusa_lm_head.pt")
    state = torch.load(file, weights_only=True)
    state["rogue.weight"] = torch.zeros(2)
    torch.save(state, file)
    with pytest.raises(ValueError, match=f"unexpected tensor 'rogue.weight' in Medusa head file {file}"):
        load_model(ckpt, device="cpu")


def test_gap_in_head_indices(tmp_path, base_dir):
    ckpt = _checkpoint(tmp_path, base_dir)
    file = os.path.join(ckpt, "medusa_lm_head.pt")
    state = torch.load(file, weights_only=True)
    state = {k.replace("1.", "2.", 1) if k.startswith("1.") else k: v for k, v in state.items()}
    torch.save(state, file)
    with pytest.raises(ValueError, match=r"gaps in its head indices: \[0, 2\]"):
        load_model(ckpt, device="cpu")


def test_invalid_config_json_is_named(tmp_path, base_dir):
    ckpt = _checkpoint(tmp_path, base_dir)
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        f.write('{"medusa_num_heads": 2,')
    with pytest.raises(ValueError, match=f"{os.path.join(ckpt, 'config.json')} is not valid JSON"):
        load_model(ckpt, device="cpu")


def test_missing_base_path_says_how_to_fix(tmp_path, base_dir, monkeypatch):
    monkeypatch.delenv("FASTCHAT_SPEC_BASE_MODEL", raising=False)
    ckpt = _checkpoint(tmp_path, base_dir)
    config_file = os.path.join(ckpt, "config.json")
    with open(config_file) as f:
        config = json.load(f)
    del config["base_model_name_or_path"]
    with open(config_file, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="has no base_model_name_or_path; add it or set FASTCHAT_SPEC_BASE_MODEL"):
        load_model(ckpt, device="cpu")


def test_base_path_that_does_not_exist(tmp_path, base_dir, monkeypatch):
    """A base path that is neither a folder nor a cached hub id fails loudly, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gone = os.path.join(str(tmp_path), "base-copy")
    shutil.copytree(base_dir, gone)
    ckpt = _checkpoint(tmp_path, gone)
    shutil.rmtree(gone)
    with pytest.raises(Exception) as info:
        load_model(ckpt, device="cpu")
    assert "base-copy" in str(info.value)
