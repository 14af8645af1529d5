"""The bundled default model: it loads through FastChat, stays exact and keeps its speed-up."""
from __future__ import annotations

import json
import os

import pytest
from fastchat.model.model_adapter import get_conversation_template, get_generate_stream_function, load_model
from fastchat.serve.inference import generate_stream as fastchat_generate_stream

import fastchat_spec

CARD = os.path.join(fastchat_spec.default_model_path(), "measured.json")
pytestmark = pytest.mark.skipif(not os.path.exists(CARD), reason="no bundled model in this checkout")


@pytest.fixture(scope="module")
def measured():
    with open(CARD, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def prompts(measured):
    from fastchat_spec.train.data import heldout_first_turns

    path = fastchat_spec.default_model_path()
    out = []
    for turn in heldout_first_turns(measured["prompts"]):
        conv = get_conversation_template(path)
        conv.append_message(conv.roles[0], turn)
        conv.append_message(conv.roles[1], None)
        out.append(conv.get_prompt())
    return out


def test_default_model_is_a_speculative_vicuna():
    path = fastchat_spec.default_model_path()
    model, _ = load_model(path, device="cpu")
    assert type(model).__name__ == "SpecModel" and model.spec.method == "medusa"
    assert get_conversation_template(path).name == "vicuna_v1.1"
    # Its tree lists the most often accepted paths first: what a busy batched step keeps of it.
    from fastchat_spec.generate.proposers.base import model_tree

    tree = model_tree(model)
    assert tree.ranked and tree.num_nodes == 128
    assert tree.within(5)[0].paths == ((0,), (0, 0), (0, 0, 0), (0, 0, 0, 0))


def test_heldout_tokens_per_step_and_exactness(measured, prompts):
    """Greedy on held-out first turns: same text as FastChat's own decoder, and tau at the measured level."""
    path = fastchat_spec.default_model_path()
    model, tok = load_model(path, device="cpu")
    stream = get_generate_stream_function(model, path)
    steps = tokens = 0
    for prompt in prompts:
        params = {"prompt": prompt, "temperature": 0.0, "max_new_tokens": measured["max_new_tokens"], "echo": False}
        last = list(stream(model, tok, dict(params), "cpu", 2048))[-1]
        stock = list(fastchat_generate_stream(model.base, tok, dict(params), "cpu", 2048))[-1]
        assert last["text"] == stock["text"], prompt
        steps += last["spec"]["steps"] - 1  # the prefill is not a verification step
        tokens += last["spec"]["tokens"] - 1
    tau = tokens / steps
    assert tau >= measured["tau"] - 0.15, f"tokens per step fell to {tau:.2f} (measured {measured['tau']:.2f})"
