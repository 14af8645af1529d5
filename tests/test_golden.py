"""The golden rule: greedy speculative text equals FastChat's own generate_stream, token for token."""
from __future__ import annotations

import os

import pytest
from fastchat.model.model_adapter import get_generate_stream_function, load_model
from fastchat.serve.inference import generate_stream as fastchat_generate_stream

from fastchat_spec.adapters.medusa import write_medusa_checkpoint
from fastchat_spec.generate.batch_step import DEVICE_STEP_ENV
from fastchat_spec.generate.tree import chain, default_tree
from tests import tiny

PROMPTS = [
    "The cat runs over the house.", "Why is the river fast?", "Write a poem about fire.",
    "Explain python code.", "What is a token?", "Hello world, how are you?", "List three birds.",
    "The dog jumps into the water because", "Thank you! Can you explain the model?",
    "Where is the stone tree?", "One two three", "Please write a story about a computer.",
    "How could the bird fly under the river?", "Speed token fast answer", "Who was the model?",
    "Tell me about the house and the tree.", "A", "Is the code slow or fast?",
    "Which question should we answer when the fire is quick?", "We were in the house then the dog ran.",
    "Numbers: 12345 and 678.", "Üñïçødé text — with symbols ✓",
]

# (heads, tree): one to five heads, default trees, chains, wide and narrow custom trees.
CONFIGS = [
    (1, None),
    (2, [[0], [1], [0, 0]]),
    (3, None),
    (4, chain(4).to_list()),
    (5, None),
    (5, default_tree(5, num_nodes=15).to_list()),
]

CONTEXT = 1024


@pytest.fixture(scope="module")
def stock_outputs(base_dir):
    return tiny.stock_greedy_texts(base_dir, PROMPTS, 48, CONTEXT)


@pytest.mark.parametrize("num_heads,tree", CONFIGS)
def test_greedy_matches_fastchat(tmp_path, base_dir, stock_outputs, num_heads, tree):
    ckpt = os.path.join(tmp_path, f"medusa-{num_heads}")
    heads = tiny.random_medusa_heads(base_dir, num_heads, seed=num_heads)
    write_medusa_checkpoint(ckpt, heads, base_dir, tree=tree)
    model, tok = load_model(ckpt, device="cpu")
    stream = get_generate_stream_function(model, ckpt)
    assert stream.__module__ == "fastchat_spec.generate.stream"
    tiny.stream_greedy(stream, model, tok, PROMPTS, stock_outputs, 48, CONTEXT)


@pytest.mark.parametrize("driver", ["device", "host"])
def test_oracle_heads_accept_several_tokens_and_stay_exact(tmp_path, base_dir, stock_outputs, monkeypatch, driver):
    """Heads that agree with the base often: many tokens per step, same text, whether the greedy step
    runs whole on the device (the default) or is driven from the host (FASTCHAT_SPEC_DEVICE_STEP=0)."""
    monkeypatch.setenv(DEVICE_STEP_ENV, "1" if driver == "device" else "0")
    ckpt = os.path.join(tmp_path, "medusa-oracle")
    write_medusa_checkpoint(ckpt, tiny.oracle_medusa_heads(base_dir, 3), base_dir, tree=chain(3).to_list())
    model, tok = load_model(ckpt, device="cpu")
    stream = get_generate_stream_function(model, ckpt)
    steps, tokens = tiny.stream_greedy(stream, model, tok, PROMPTS[:8], stock_outputs, 48, CONTEXT)
    assert tokens / steps > 1.0


def test_greedy_with_repetition_penalty_matches_fastchat(medusa_dir, base_dir):
    base, btok = load_model(base_dir, device="cpu")
    model, tok = load_model(medusa_dir, device="cpu")
    for prompt in PROMPTS[:6]:
        params = {"prompt": prompt, "temperature": 0.0, "repetition_penalty": 1.3, "max_new_tokens": 40,
                  "echo": False}
        stock = list(fastchat_generate_stream(base, btok, dict(params), "cpu", CONTEXT))[-1]["text"]
        ours = list(get_generate_stream_function(model, medusa_dir)(model, tok, dict(params), "cpu", CONTEXT))
        assert ours[-1]["text"] == stock
