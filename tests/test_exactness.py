"""The golden rule, for every method: greedy text equals FastChat's own generate_stream on the base, token for token.

One case per tiny checkpoint of every method in ``fastchat_spec/methods.py``
that has a checkpoint writer (``tests/tiny.py: TINY_CHECKPOINTS``): written
by the method's own writer, loaded with FastChat's ``load_model``, decoded
through the ``generate_stream`` FastChat picks for it, and compared with
FastChat's stock ``generate_stream`` on the plain base. Each case runs with
the greedy step whole on the device (the batched step, ``FASTCHAT_SPEC_DEVICE_STEP=1``)
and driven from the host (``=0``); a method whose proposer keeps no device
state (Jacobi windows) always steps on the host, so it has the one driver.
"""
from __future__ import annotations

import importlib.util

import pytest
from fastchat.model.model_adapter import get_generate_stream_function, get_model_adapter, load_model

from fastchat_spec.generate.batch_step import DEVICE_STEP_ENV
from fastchat_spec.methods import METHODS
from fastchat_spec.spec_model import SpecModel
from tests import tiny
from tests.tiny import PROMPTS, TINY_CHECKPOINTS

pytestmark = pytest.mark.usefixtures("one_thread")

DRIVERS = {"device": "1", "host": "0"}
EXACT_PROMPTS = PROMPTS[:8]


def _cases():
    for method in METHODS.values():
        if method.writer is None:
            continue
        checkpoints = TINY_CHECKPOINTS.get(method.name)
        if not checkpoints:  # a new method must bring its tiny checkpoint
            yield pytest.param(method, None, "host", id=f"{method.name}-no-tiny-checkpoint")
            continue
        drivers = DRIVERS if method.proposer_class.device_state else ["host"]
        for checkpoint in checkpoints:
            for driver in drivers:
                yield pytest.param(method, checkpoint, driver, id=f"{method.name}-{checkpoint.name}-{driver}")


def _write(method, checkpoint, tmp_path, base_dir, base_model) -> str:
    # "-vicuna-" keeps FastChat's choices for the base (template, slow tokenizer) on the checkpoint.
    out = str(tmp_path / f"{method.name}-vicuna-{checkpoint.name}")
    return checkpoint.write(method.write_checkpoint, out, base_dir, base_model)


@pytest.mark.parametrize("method,checkpoint,driver", list(_cases()))
def test_greedy_matches_fastchat(tmp_path, base_dir, base_model, stock_texts, monkeypatch, method, checkpoint,
                                 driver):
    assert checkpoint is not None, (f"{method.name} has a checkpoint writer but no tiny checkpoint: add one to "
                                    "tests/tiny.py: TINY_CHECKPOINTS")
    monkeypatch.setenv(DEVICE_STEP_ENV, DRIVERS[driver])
    path = _write(method, checkpoint, tmp_path, base_dir, base_model)
    assert type(get_model_adapter(path)) is method.adapter_class
    model, tok = load_model(path, device="cpu")
    assert isinstance(model, SpecModel) and model.spec.method == method.name
    stream = get_generate_stream_function(model, path)
    assert stream.__module__ == "fastchat_spec.generate.stream"
    steps, tokens = tiny.stream_greedy(stream, model, tok, EXACT_PROMPTS, stock_texts, **checkpoint.request)
    if checkpoint.multi_token:  # drafts were accepted: the comparison covered multi-token steps
        assert tokens / steps > 1.0, (steps, tokens)


@pytest.mark.parametrize("method", [m for m in METHODS.values() if m.name in TINY_CHECKPOINTS], ids=lambda m: m.name)
def test_repetition_penalty_matches_fastchat(tmp_path, base_dir, base_model, stock_texts, method):
    """A repetition penalty needs the host-driven step; its greedy text is FastChat's too."""
    checkpoint = TINY_CHECKPOINTS[method.name][0]
    path = _write(method, checkpoint, tmp_path, base_dir, base_model)
    model, tok = load_model(path, device="cpu")
    stream = get_generate_stream_function(model, path)
    for prompt in PROMPTS[:3]:
        params = tiny.greedy(prompt, repetition_penalty=1.3)
        assert list(stream(model, tok, params, "cpu", tiny.CONTEXT))[-1]["text"] == \
            stock_texts.text(prompt, repetition_penalty=1.3), prompt


@pytest.fixture(scope="module")
def stock_8bit_texts(base_dir):
    """FastChat's own greedy text on the base loaded with its --load-8bit (weights compressed to 8-bit groups)."""
    from fastchat.serve.inference import generate_stream

    model, tok = load_model(base_dir, device="cpu", load_8bit=True)
    return {p: list(generate_stream(model, tok, tiny.greedy(p), "cpu", tiny.CONTEXT))[-1]["text"] for p in PROMPTS[:3]}


@pytest.mark.parametrize("method", [m for m in METHODS.values() if m.name in TINY_CHECKPOINTS], ids=lambda m: m.name)
def test_load_8bit_keeps_fastchats_text(tmp_path, base_dir, base_model, stock_8bit_texts, method):
    """FastChat's --load-8bit compresses the base (FastChat's own CLinear layers); the drafter stays as it is, and
    the greedy text is FastChat's on the same compressed base."""
    from fastchat.model.compression import CLinear

    path = _write(method, TINY_CHECKPOINTS[method.name][0], tmp_path, base_dir, base_model)
    model, tok = load_model(path, device="cpu", load_8bit=True)
    assert isinstance(model, SpecModel) and isinstance(model.base.get_output_embeddings(), CLinear)
    stream = get_generate_stream_function(model, path)
    for prompt, expected in stock_8bit_texts.items():
        params = tiny.greedy(prompt, **TINY_CHECKPOINTS[method.name][0].request)
        assert list(stream(model, tok, params, "cpu", tiny.CONTEXT))[-1]["text"] == expected, prompt


@pytest.mark.parametrize("method", METHODS.values(), ids=lambda m: m.name)
def test_registry_names_parts_that_exist(method):
    """Every module and class a registry line names is there (trainers are found, not imported)."""
    assert method.proposer_class.__name__.endswith("Proposer")
    if method.adapter:
        assert method.adapter_class.method == method.name
    for module in (method.heads, method.trainer):
        if module:
            assert importlib.util.find_spec(module) is not None, module
    if method.writer:
        assert callable(method.write_checkpoint)
