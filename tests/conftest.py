"""Shared fixtures, built once per session: the tiny tokenizer, base and Medusa checkpoint, FastChat's text."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import fastchat_spec  # noqa: E402

fastchat_spec.register()

from tests import tiny  # noqa: E402


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tokenizer_dir(models_dir):
    return tiny.build_tokenizer(os.path.join(models_dir, "tokenizer"))


@pytest.fixture(scope="session")
def base_dir(models_dir, tokenizer_dir):
    return tiny.build_llama(os.path.join(models_dir, "vicuna-tiny"), tokenizer_dir)


@pytest.fixture(scope="session")
def medusa_dir(models_dir, base_dir):
    """A Medusa v0.1 layout (pickled heads with their own lm_heads), written by hand."""
    from fastchat_spec.adapters.medusa import write_medusa_checkpoint

    out = os.path.join(models_dir, "medusa-vicuna-tiny")
    heads = tiny.random_medusa_heads(base_dir, num_heads=3)
    write_medusa_checkpoint(out, heads, base_dir, safetensors=False)
    return out


@pytest.fixture(scope="session")
def base_model(base_dir):
    """The tiny base as a plain Hugging Face model, frozen (eval, no gradients); tests must not change it."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def base_shape(base_dir):
    """(hidden size, vocab size) of the tiny base."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_dir)
    return config.hidden_size, config.vocab_size


@pytest.fixture(scope="session")
def stock_texts(base_dir):
    """FastChat's own greedy text on the tiny base (``stock[prompt]``, ``stock.text(prompt, **request)``)."""
    return tiny.StockTexts(base_dir)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models decode faster on one thread, and CI shares its two cores (``usefixtures`` it per module)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_base_override(monkeypatch):
    """Checkpoints find their base by their own config, whatever the caller's environment says."""
    from fastchat_spec.adapters.checkpoint import BASE_OVERRIDE_ENV

    monkeypatch.delenv(BASE_OVERRIDE_ENV, raising=False)


@pytest.fixture
def subprocess_env():
    """Environment for FastChat commands run as subprocesses: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session", autouse=True)
def _frozen_gc():
    """FastChat's generate_stream runs gc.collect() per request; freezing the
    long-lived objects (torch, transformers, fixtures) makes that cheap."""
    import gc

    gc.collect()
    gc.freeze()
    yield
