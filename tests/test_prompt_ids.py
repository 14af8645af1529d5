"""A prompt is tokenized once for FastChat's /count_token and the answer that follows it."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from fastchat_spec.generate import prompt_ids as kept
from fastchat_spec.generate.request import parse_request
from tests.tiny import CONTEXT, PROMPTS


@pytest.fixture(scope="module")
def tokenizer(base_dir):
    return AutoTokenizer.from_pretrained(base_dir, use_fast=False)


class CountingTokenizer:
    """The tiny tokenizer, counting how often it tokenizes text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = 0

    def __call__(self, text, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_the_request_after_a_count_reuses_its_ids(tokenizer):
    counting = CountingTokenizer(tokenizer)
    counted = kept.prompt_ids(counting, PROMPTS[0])
    request = parse_request({"prompt": PROMPTS[0], "max_new_tokens": 8, "temperature": 0}, counting, CONTEXT)
    assert counting.calls == 1
    assert request.prompt_ids == counted == tokenizer(PROMPTS[0]).input_ids
    counted.append(-1)  # a caller's list is its own
    assert kept.prompt_ids(counting, PROMPTS[0]) == tokenizer(PROMPTS[0]).input_ids


def test_only_the_latest_prompts_are_kept(tokenizer, monkeypatch):
    monkeypatch.setattr(kept, "KEPT", 2)
    counting = CountingTokenizer(tokenizer)
    for prompt in PROMPTS[:3]:
        kept.prompt_ids(counting, prompt)
    kept.prompt_ids(counting, PROMPTS[2])  # kept
    assert counting.calls == 3
    kept.prompt_ids(counting, PROMPTS[0])  # dropped: tokenized again
    assert counting.calls == 4
    long_prompt = "a" * (kept.LONGEST + 1)
    kept.prompt_ids(counting, long_prompt)
    kept.prompt_ids(counting, long_prompt)
    assert counting.calls == 6  # a very long prompt is never kept
