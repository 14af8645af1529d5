"""A request with ``logprobs`` gets FastChat's logprobs, whatever method drafts its tokens.

FastChat's OpenAI API server passes /v1/completions' ``logprobs`` (and
``echo``) to the worker; FastChat's own decoder answers with every token's
text, the base's log-probability of it, empty ``top_logprobs`` and text
offsets. Ours must give the same entries, also for tokens accepted from a
draft (several per step), and must not change the other requests of a batch.
"""
from __future__ import annotations

import pytest
import torch
from fastchat.model.model_adapter import get_generate_stream_function, load_model
from fastchat.serve.inference import generate_stream as fastchat_generate_stream

from fastchat_spec.generate.engine import Generation
from fastchat_spec.generate.sampling import SamplingParams
from fastchat_spec.methods import METHODS
from tests.test_batching import run_together
from tests.tiny import CONTEXT, PROMPTS, TINY_CHECKPOINTS, RecordingTokenizer, greedy

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW = 24
TOLERANCE = 1e-4  # float32 on the CPU: a tree's forward and FastChat's one-token forward round differently


def _served(method_name: str, tmp_path_factory, base_dir, base_model):
    method, checkpoint = METHODS[method_name], TINY_CHECKPOINTS[method_name][0]
    out = str(tmp_path_factory.mktemp("logprobs") / f"{method.name}-vicuna-{checkpoint.name}")
    path = checkpoint.write(method.write_checkpoint, out, base_dir, base_model)
    model, tok = load_model(path, device="cpu")
    return model, tok, get_generate_stream_function(model, path), checkpoint


@pytest.fixture(scope="module", params=sorted(TINY_CHECKPOINTS))
def served(request, tmp_path_factory, base_dir, base_model):
    return _served(request.param, tmp_path_factory, base_dir, base_model)


@pytest.fixture(scope="module")
def medusa(tmp_path_factory, base_dir, base_model):
    return _served("medusa", tmp_path_factory, base_dir, base_model)


def ours(served_model, prompt: str, max_new_tokens: int = MAX_NEW, **extra) -> list[dict]:
    model, tok, stream, checkpoint = served_model
    params = greedy(prompt, max_new_tokens, **checkpoint.request, **extra)
    return list(stream(model, tok, params, "cpu", CONTEXT))


def assert_same_logprobs(mine: dict, fastchat: dict) -> None:
    assert mine["tokens"] == fastchat["tokens"]
    assert mine["text_offset"] == fastchat["text_offset"]
    assert mine["top_logprobs"] == fastchat["top_logprobs"]
    assert len(mine["token_logprobs"]) == len(fastchat["token_logprobs"])
    for a, b in zip(mine["token_logprobs"], fastchat["token_logprobs"]):
        assert (a is None) == (b is None) and (a is None or abs(a - b) < TOLERANCE), (a, b)


@pytest.mark.parametrize("echo", [False, True], ids=["answer", "echo"])
def test_logprobs_equal_fastchats_own(served, stock_texts, echo):
    """Greedy: the same text and the same logprobs entries as FastChat's decoder on the base, echo or not."""
    steps = tokens = 0
    for prompt in PROMPTS[:2]:
        chunks = ours(served, prompt, logprobs=1, echo=echo)
        stock = stock_texts.last(prompt, MAX_NEW, logprobs=1, echo=echo)
        last = chunks[-1]
        assert last["text"] == stock["text"]
        assert_same_logprobs(last["logprobs"], stock["logprobs"])
        for chunk in chunks[:-1]:  # a streaming client sees the list grow, never change
            entries = chunk["logprobs"]["tokens"]
            assert entries == last["logprobs"]["tokens"][: len(entries)]
        steps, tokens = steps + last["spec"]["steps"], tokens + last["spec"]["tokens"]
    if served[3].multi_token:  # drafts were accepted: logprobs of tokens verified several at a time
        assert tokens > steps


def test_logprobs_end_with_the_stop_token_as_fastchats(medusa, base_dir, stock_texts):
    prompt = PROMPTS[2]
    model, tok = load_model(base_dir, device="cpu")
    recorder = RecordingTokenizer(tok)
    list(fastchat_generate_stream(model, recorder, greedy(prompt, MAX_NEW), "cpu", CONTEXT))
    stop_id = next(t for t in recorder.last_ids[5:] if t > 2)  # a mid-vocab id of the greedy answer
    mine = ours(medusa, prompt, logprobs=1, stop_token_ids=[stop_id])[-1]
    stock = stock_texts.last(prompt, MAX_NEW, logprobs=1, stop_token_ids=[stop_id])
    assert mine["finish_reason"] == stock["finish_reason"] == "stop"
    assert_same_logprobs(mine["logprobs"], stock["logprobs"])  # the stop token is the last entry


def test_logprobs_stop_at_the_token_that_completes_a_stop_string(medusa):
    prompt = PROMPTS[3]
    full = ours(medusa, prompt, logprobs=1)[-1]
    tokens = full["logprobs"]["tokens"]
    k = next(i for i in range(4, len(tokens)) if tokens[i].strip())
    cut = ours(medusa, prompt, logprobs=1, stop=tokens[k].strip())[-1]
    assert cut["finish_reason"] == "stop" and tokens[k].strip() not in cut["text"]
    assert cut["logprobs"]["tokens"] == tokens[: len(cut["logprobs"]["tokens"])]
    assert tokens[k].strip() in "".join(cut["logprobs"]["tokens"])  # the completing token is the last entry
    assert tokens[k].strip() not in "".join(cut["logprobs"]["tokens"][:-1])


def test_without_logprobs_the_field_stays_none(medusa):
    assert ours(medusa, PROMPTS[0])[-1]["logprobs"] is None
    assert ours(medusa, PROMPTS[0], logprobs=None)[-1]["logprobs"] is None
    assert ours(medusa, PROMPTS[0], logprobs=False)[-1]["logprobs"] is None


def test_a_logprobs_request_beside_batched_ones_changes_nothing(medusa):
    """The logprobs request is stepped by the host beside the batched greedy step; every text stays."""
    requests = [greedy(p, 32) for p in PROMPTS[:4]] + [greedy(PROMPTS[4], 32, logprobs=1)]
    alone = [ours(medusa, r["prompt"], 32, **{k: v for k, v in r.items() if k == "logprobs"})[-1] for r in requests]
    together = run_together(medusa[:3], requests)
    for a, t in zip(alone, together):
        assert t["text"] == a["text"]
        assert t["logprobs"] == a["logprobs"]
    assert together[-1]["logprobs"] is not None and len(together[-1]["logprobs"]["tokens"]) == 32


@pytest.mark.parametrize("method_name", sorted(TINY_CHECKPOINTS))
def test_sampled_tokens_carry_the_base_models_logprobs(method_name, tmp_path_factory, base_dir, base_model):
    """Sampling draws from processed logits; the logprobs are still the raw base's, token by token."""
    model, tok, _, checkpoint = _served(method_name, tmp_path_factory, base_dir, base_model)
    prompt_ids = tok(PROMPTS[5]).input_ids
    torch.manual_seed(0)
    gen = Generation(model, prompt_ids, 40, SamplingParams(0.8, 0.95, -1, 1.0), options=checkpoint.request,
                     logprobs=True, prompt_logprobs=True)
    tokens, values = list(gen.prefill()), list(gen.step_logprobs)
    prompt_values = gen.prompt_logprobs
    while len(tokens) < 40:
        step = gen.step()
        assert len(gen.step_logprobs) == len(step)
        tokens, values = tokens + step, values + gen.step_logprobs
    gen.close()
    ids = torch.tensor([prompt_ids + tokens])
    with torch.no_grad():
        logits = base_model(ids).logits[0].float()
    expected = logits[:-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0].tolist()
    p = len(prompt_ids)
    assert prompt_values == pytest.approx(expected[: p - 1], abs=TOLERANCE)
    assert values == pytest.approx(expected[p - 1 :], abs=TOLERANCE)


def test_a_loglikelihood_request_scores_the_prompt_as_fastchat(medusa, stock_texts):
    """What lm-evaluation-harness sends to score a text (echo, logprobs, max_tokens 1): FastChat's entries."""
    for prompt in PROMPTS[:3]:
        mine = ours(medusa, prompt, 1, logprobs=1, echo=True)[-1]
        stock = stock_texts.last(prompt, 1, logprobs=1, echo=True)
        assert mine["text"] == stock["text"]
        assert_same_logprobs(mine["logprobs"], stock["logprobs"])
        assert mine["logprobs"]["token_logprobs"][0] is None and len(mine["logprobs"]["tokens"]) > 2
