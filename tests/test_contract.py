"""Our generate_stream keeps the contract of FastChat's own ``generate_stream``.

Every test runs FastChat's ``fastchat.serve.inference.generate_stream`` on the
base model (greedy) next to ours on a Medusa checkpoint of that base, with
random heads (drafts mostly rejected) and with heads that copy the base
lm_head (several tokens per step, so stops land in the middle of a step).

Known FastChat quirks that we do not copy, each asserted below:
* on ``finish_reason == "length"`` FastChat reports ``completion_tokens`` one
  short (the loop index, max_new_tokens - 1); we report the tokens generated;
* FastChat appends EOS to the caller's ``stop_token_ids`` list; we copy it.
"""
from __future__ import annotations

import os
import random

import pytest
from fastchat.model.model_adapter import get_generate_stream_function, load_model
from fastchat.serve.inference import generate_stream as fastchat_generate_stream

from fastchat_spec.adapters.medusa import write_medusa_checkpoint
from fastchat_spec.generate.request import parse_request
from fastchat_spec.generate.stream import LAST_CHUNK_ONLY, IncrementalText, whole_decoder, window_decoder
from fastchat_spec.generate.tree import chain
from tests import tiny
from tests.tiny import CONTEXT, PROMPTS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(base_dir):
    return load_model(base_dir, device="cpu")


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory, base_dir):
    out = os.path.join(str(tmp_path_factory.mktemp("contract")), "medusa-vicuna-oracle")
    write_medusa_checkpoint(out, tiny.oracle_medusa_heads(base_dir, 4), base_dir, tree=chain(4).to_list())
    return out


@pytest.fixture(scope="module", params=["random_heads", "oracle_heads"])
def spec(request, medusa_dir, oracle_dir):
    path = medusa_dir if request.param == "random_heads" else oracle_dir
    model, tok = load_model(path, device="cpu")
    return model, tok, get_generate_stream_function(model, path)


def stock_run(base, params, context=CONTEXT) -> list[dict]:
    model, tok = base
    params = dict(params)
    if "stop_token_ids" in params:
        params["stop_token_ids"] = list(params["stop_token_ids"])  # FastChat appends EOS in place
    return list(fastchat_generate_stream(model, tok, params, "cpu", context))


def spec_run(spec, params, context=CONTEXT) -> list[dict]:
    model, tok, stream = spec
    return list(stream(model, tok, dict(params), "cpu", context))


def greedy(prompt: str, **extra) -> dict:
    return {"prompt": prompt, "temperature": 0.0, "max_new_tokens": 40, "echo": False, **extra}


def stock_ids(base, prompt: str) -> list[int]:
    model, tok = base
    recorder = tiny.RecordingTokenizer(tok)
    list(fastchat_generate_stream(model, recorder, greedy(prompt), "cpu", CONTEXT))
    return recorder.last_ids


def unique_substring(text: str, start: int = 4) -> str:
    """A printable piece that occurs once in ``text`` (FastChat's rfind and a first-occurrence
    search then agree)."""
    for size in (2, 1):
        for i in range(start, len(text) - size + 1):
            piece = text[i:i + size]
            if piece.isprintable() and piece.strip() == piece and "\ufffd" not in piece and text.count(piece) == 1:
                return piece
    pytest.skip(f"no unique printable piece in {text!r}")


# -- text, finish_reason, usage ------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS[:4])
def test_length_finish_text_and_usage(base, spec, prompt):
    stock, ours = stock_run(base, greedy(prompt))[-1], spec_run(spec, greedy(prompt))[-1]
    assert ours["text"] == stock["text"]
    assert ours["finish_reason"] == stock["finish_reason"] == "length"
    assert ours["usage"]["prompt_tokens"] == stock["usage"]["prompt_tokens"]
    # FastChat's off-by-one: it reports the loop index (39) after generating 40 tokens.
    assert stock["usage"]["completion_tokens"] == 39
    assert ours["usage"]["completion_tokens"] == 40
    assert ours["usage"]["total_tokens"] == ours["usage"]["prompt_tokens"] + 40
    assert ours["logprobs"] is None


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_stop_token_ids(base, spec, prompt):
    ids = stock_ids(base, prompt)
    stop_id = next(t for t in ids[3:] if t > 2)  # a mid-vocab id the greedy answer contains
    stop_at = ids.index(stop_id)
    stop_ids = [stop_id]
    stock = stock_run(base, greedy(prompt, stop_token_ids=stop_ids))[-1]
    ours = spec_run(spec, greedy(prompt, stop_token_ids=stop_ids))[-1]
    assert stop_ids == [stop_id], "the caller's list must not be mutated"
    assert ours["text"] == stock["text"]
    assert ours["finish_reason"] == stock["finish_reason"] == "stop"
    # Tokens before the stop token: FastChat counts them right here.
    assert ours["usage"]["completion_tokens"] == stock["usage"]["completion_tokens"] == stop_at


def test_callers_stop_token_ids_are_not_mutated(base, spec):
    model, tok, stream = spec
    stop_ids = [5]
    params = greedy(PROMPTS[0], stop_token_ids=stop_ids)
    list(stream(model, tok, params, "cpu", CONTEXT))
    assert params["stop_token_ids"] is stop_ids and stop_ids == [5]
    # FastChat itself appends EOS to the same list (the reason we copy it).
    stock_list = [5]
    list(fastchat_generate_stream(base[0], base[1], greedy(PROMPTS[0], stop_token_ids=stock_list), "cpu", CONTEXT))
    assert stock_list == [5, tok.eos_token_id]


@pytest.mark.parametrize("prompt", PROMPTS[:3])
@pytest.mark.parametrize("as_list", [False, True])
def test_stop_strings(base, spec, prompt, as_list):
    full = stock_run(base, greedy(prompt))[-1]["text"]
    piece = unique_substring(full)
    stop = ["never in the text", piece] if as_list else piece
    stock = stock_run(base, greedy(prompt, stop=stop))[-1]
    ours = spec_run(spec, greedy(prompt, stop=stop))[-1]
    assert ours["text"] == stock["text"] == full[: full.index(piece)]
    assert ours["finish_reason"] == stock["finish_reason"] == "stop"


def test_stop_string_never_streamed_even_partly(spec, base):
    full = stock_run(base, greedy(PROMPTS[0]))[-1]["text"]
    piece = unique_substring(full)
    for chunk in spec_run(spec, greedy(PROMPTS[0], stop=piece)):
        assert piece not in chunk["text"]


@pytest.mark.parametrize("echo", [True, False])
def test_echo(base, spec, echo):
    prompt = PROMPTS[1]
    stock = stock_run(base, greedy(prompt, echo=echo))[-1]
    ours = spec_run(spec, greedy(prompt, echo=echo))[-1]
    assert ours["text"] == stock["text"]
    assert ours["text"].startswith(prompt) == echo


def test_echo_with_stop_string_searches_only_the_answer(base, spec):
    """A stop string that occurs in the prompt must not cut the echoed prompt."""
    prompt = "The cat runs over the house."
    full = stock_run(base, greedy(prompt))[-1]["text"]
    params = greedy(prompt, echo=True, stop="cat")
    ours = spec_run(spec, params)[-1]
    stock = stock_run(base, params)[-1]
    assert ours["text"] == stock["text"]
    assert ours["text"].startswith(prompt + full[:5])


# -- streaming -----------------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS[:4])
def test_stream_only_grows_and_reports_spec(spec, prompt):
    chunks = spec_run(spec, greedy(prompt, max_new_tokens=48))
    assert len(chunks) > 1
    previous = ""
    for chunk in chunks[:-1]:
        assert chunk["finish_reason"] is None
    for chunk in chunks:
        assert chunk["text"].startswith(previous), "a client computing deltas would lose text"
        previous = chunk["text"]
        stats = chunk["spec"]
        assert set(stats) == {"steps", "tokens", "accepted"}
        assert 1 <= stats["steps"] <= stats["tokens"]
        assert len(stats["accepted"]) == stats["steps"] - 1  # the prefill accepts no draft
        assert stats["tokens"] == stats["steps"] + sum(stats["accepted"])
        assert stats["tokens"] >= chunk["usage"]["completion_tokens"]
    assert chunks[-1]["finish_reason"] == "length"


def test_oracle_heads_do_accept_drafts(oracle_dir):
    """Sanity for the oracle parametrisation: stops really land inside multi-token steps."""
    model, tok = load_model(oracle_dir, device="cpu")
    stream = get_generate_stream_function(model, oracle_dir)
    last = list(stream(model, tok, greedy(PROMPTS[0], max_new_tokens=48), "cpu", CONTEXT))[-1]
    assert sum(last["spec"]["accepted"]) > 0


@pytest.mark.parametrize("interval", [1, 2, 5])
def test_stream_interval_changes_chunks_not_text(base, spec, interval):
    model, tok, stream = spec
    chunks = list(stream(model, tok, greedy(PROMPTS[2]), "cpu", CONTEXT, stream_interval=interval))
    assert chunks[-1]["text"] == stock_run(base, greedy(PROMPTS[2]))[-1]["text"]


@pytest.mark.parametrize("extra", [{}, {"stop_token_ids": [7]}, {"stop": "STOP-IN-ANSWER"}, {"echo": True}],
                         ids=["length", "stop_id", "stop_string", "echo"])
def test_non_streamed_answer_is_the_streams_last_chunk(base, spec, extra):
    """The worker's /worker_generate asks for the last chunk alone: the same text, usage,
    finish_reason and spec stats as a stream's last chunk, and no chunk before it."""
    model, tok, stream = spec
    params = greedy(PROMPTS[1], **extra)
    if extra.get("stop"):  # a stop string the answer really contains
        params["stop"] = unique_substring(stock_run(base, greedy(PROMPTS[1]))[-1]["text"])
    streamed = spec_run(spec, params)
    only = list(stream(model, tok, dict(params), "cpu", CONTEXT, stream_interval=LAST_CHUNK_ONLY))
    assert len(only) == 1
    assert only[0] == streamed[-1]
    assert only[0]["text"] == stock_run(base, params)[-1]["text"]


# -- context and the stock path ----------------------------------------------------------


def test_prompt_truncated_to_the_context_as_fastchat_does(base, spec):
    prompt = "The dog jumps into the water because the cat runs over the house and the bird flies."
    tok = base[1]
    n_prompt = len(tok(prompt).input_ids)
    # The prompt fits the context, the prompt plus the answer does not: FastChat keeps the
    # prompt's last (context - max_new_tokens - 1) tokens. (So it does for a prompt longer than
    # the whole context: test_bad_input.py.)
    context, max_new = n_prompt + 5, 20
    keep = context - max_new - 1
    assert keep < n_prompt
    params = greedy(prompt, max_new_tokens=max_new)
    stock = stock_run(base, params, context)[-1]
    ours = spec_run(spec, params, context)[-1]
    assert ours["usage"]["prompt_tokens"] == stock["usage"]["prompt_tokens"] == keep
    assert ours["text"] == stock["text"]


def test_spec_disable_gives_fastchat_stock_output(base, spec):
    params = greedy(PROMPTS[3], stop_token_ids=[7])
    stock = stock_run(base, params)
    ours = spec_run(spec, {**params, "spec_disable": True})
    assert [c["text"] for c in ours] == [c["text"] for c in stock]
    assert [c["usage"] for c in ours] == [c["usage"] for c in stock]
    assert [c["finish_reason"] for c in ours] == [c["finish_reason"] for c in stock]
    # One token per step, said so in the same ``spec`` field.
    assert all(c["spec"]["steps"] == c["spec"]["tokens"] and not any(c["spec"]["accepted"]) for c in ours)


def test_judge_sent_end_gives_fastchats_own_answer(base, spec):
    """FastChat's CLI --judge-sent-end (a stop token inside a sentence is replaced by the second choice):
    FastChat's decoder serves it, so the answer is its own, not one that ignores the flag."""
    model, tok = base
    ids = stock_ids(base, PROMPTS[1])
    params = greedy(PROMPTS[1], stop_token_ids=[next(t for t in ids[3:] if t > 2)])
    stock = list(fastchat_generate_stream(model, tok, dict(params, stop_token_ids=list(params["stop_token_ids"])),
                                          "cpu", CONTEXT, 2, True))
    spec_model, spec_tok, stream = spec
    ours = list(stream(spec_model, spec_tok, dict(params), "cpu", CONTEXT, 2, True))
    assert [c["text"] for c in ours] == [c["text"] for c in stock]
    assert ours[-1]["finish_reason"] == stock[-1]["finish_reason"]
    assert ours[-1]["text"] != stock_run(base, params)[-1]["text"], "the flag should change this answer"


CORPUS = " ".join(PROMPTS) + " Üñïçødé — ✓ 12345 (a, b). Don't stop!  two  spaces"


def with_and_without_echo(tok) -> list:
    """A request on the corpus's start, without and with echo (the prompt's ids then lead the text)."""
    return [parse_request({"prompt": CORPUS[:40], "echo": echo}, tok, CONTEXT) for echo in (False, True)]


def slow_tokenizer(base, tokenizer_of: str):
    """The tiny test tokenizer, or the bundled model's, both slow SentencePiece Llama tokenizers."""
    import fastchat_spec
    from transformers import AutoTokenizer

    if tokenizer_of == "tiny":
        return base[1]
    return AutoTokenizer.from_pretrained(fastchat_spec.default_model_path(), use_fast=False)


@pytest.mark.parametrize("tokenizer_of", ["tiny", "bundled"])
def test_streamed_text_is_the_same_with_sentencepieces_own_decode(base, tokenizer_of):
    """The fast window decode of a slow SentencePiece tokenizer streams exactly what the tokenizer's decode does."""
    tok = slow_tokenizer(base, tokenizer_of)
    assert window_decoder(tok) is not None
    rng = random.Random(0)
    for request in with_and_without_echo(tok):
        ids = tok(CORPUS).input_ids[1:] + [rng.randrange(3, len(tok)) for _ in range(300)]
        texts = {}
        for fast in (True, False):
            text = IncrementalText(tok, request)
            if not fast:
                text.window = text._decode
                text.window_text = text._decode(text.ids[text.prefix:])
            seen, i = [], 0
            while i < len(ids):
                step = (i % 5) + 1  # steps of 1 to 5 ids
                text.extend(ids[i:i + step])
                seen.append(text.text)
                i += step
            texts[fast] = seen
        assert texts[True] == texts[False]


@pytest.mark.parametrize("tokenizer_of", ["tiny", "bundled"])
def test_the_last_chunks_text_is_the_tokenizers_own_decode(base, tokenizer_of):
    """The final text of a slow Llama tokenizer skips its per-piece special-token look-ups, and is
    still exactly what FastChat's decode call gives: random ids, byte pieces, special and added ids
    included, with and without echo."""
    tok = slow_tokenizer(base, tokenizer_of)
    assert whole_decoder(tok) is not None
    rng = random.Random(1)
    for request in with_and_without_echo(tok):
        prompt = request.prompt_ids if request.echo else []
        for trial in range(60):
            n = rng.randrange(0, 40)
            ids = [rng.randrange(0, len(tok)) for _ in range(n)]  # every id, the special ones (0-2) included
            if trial % 3 == 0:
                ids = tok(CORPUS).input_ids[1:][:n] + ids[: n // 4]
            if trial % 10 == 1:  # a lone word boundary first: the tokenizer strips the first piece's prefix space
                ids = [tok.sp_model.PieceToId("\u2581")] * (trial % 3) + tok(CORPUS).input_ids[1:6] + ids[:3]
            theirs = tok.decode(prompt + ids, skip_special_tokens=True, spaces_between_special_tokens=False,
                                clean_up_tokenization_spaces=True)  # FastChat's call
            assert IncrementalText(tok, request).final(ids) == theirs, ids
