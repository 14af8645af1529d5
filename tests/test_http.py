"""The unchanged FastChat servers serve a Medusa checkpoint over HTTP.

One stack for the module: ``python -m fastchat.serve.controller``,
``python -m fastchat.serve.model_worker --model-path <medusa ckpt> --device cpu``
and ``python -m fastchat.serve.openai_api_server``, as subprocesses on
127.0.0.1. The expected texts come from FastChat's own ``generate_stream`` on
the base model, in this process, with the prompt built from the worker's
conversation template exactly as the API server builds it.
"""
from __future__ import annotations

import json
import threading

import pytest
import requests
from fastchat.model.model_adapter import get_conversation_template

from tests.servers import local_session, logs_on_failure, module_servers

MODEL = "medusa-vicuna-tiny"
MAX_TOKENS = 32
QUESTIONS = ["Why is the river fast?", "Write a poem about fire.", "Hello world, how are you?",
             "Explain python code.", "List three birds.", "What is a token?"]

http = local_session()


@pytest.fixture(scope="module")
def servers(medusa_dir, tmp_path_factory):
    yield from module_servers(tmp_path_factory, medusa_dir, model_name=MODEL, limit_worker_concurrency=5)


print_server_logs_on_failure = logs_on_failure("servers")


def chat_prompt(medusa_dir: str, question: str):
    """The prompt the API server builds: the worker's conversation template (by model path)."""
    conv = get_conversation_template(medusa_dir)
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt(), conv


def stock_chat(stock_texts, medusa_dir, question) -> dict:
    """FastChat's last chunk on the base for the prompt and stops the API server sends."""
    prompt, conv = chat_prompt(medusa_dir, question)
    return stock_texts.last(prompt, MAX_TOKENS, stop_token_ids=list(conv.stop_token_ids or []),
                            stop=[conv.stop_str] if conv.stop_str else [])


def chat(servers, question: str, **extra) -> dict:
    r = http.post(servers.api_url + "/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": question}], "temperature": 0,
        "max_tokens": MAX_TOKENS, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def no_spec_field(response: dict) -> bool:
    """Our worker-level statistics stay out of OpenAI-format responses."""
    return "spec" not in response and all("spec" not in choice for choice in response["choices"])


def sse_events(response) -> list:
    """``data:`` payloads of a server-sent event stream, [DONE] last."""
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# -- the stack itself ----------------------------------------------------------------


def test_model_is_listed_and_uses_the_base_conversation_template(servers):
    assert MODEL in http.post(servers.controller_url + "/list_models", timeout=10).json()["models"]
    assert [m["id"] for m in http.get(servers.api_url + "/v1/models", timeout=10).json()["data"]] == [MODEL]
    conv = http.post(servers.worker_url + "/worker_get_conv_template", json={"model": MODEL}, timeout=10).json()
    assert conv["conv"]["name"] == "vicuna_v1.1"
    details = http.post(servers.worker_url + "/model_details", json={"model": MODEL}, timeout=10).json()
    assert details["context_length"] == 1024


# -- /v1/chat/completions --------------------------------------------------------------


@pytest.mark.parametrize("question", QUESTIONS[:3])
def test_chat_completion_equals_fastchat_on_the_base(servers, stock_texts, medusa_dir, question):
    """The golden rule over HTTP: the API text at temperature 0 is the base model's greedy text."""
    out = chat(servers, question)
    expected = stock_chat(stock_texts, medusa_dir, question)
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == expected["text"]
    assert choice["finish_reason"] == "length"
    assert out["usage"]["prompt_tokens"] == expected["usage"]["prompt_tokens"]
    assert out["usage"]["completion_tokens"] == MAX_TOKENS
    assert no_spec_field(out)


def test_chat_streaming_deltas_add_up_to_the_full_answer(servers, medusa_dir):
    """Needs the pydantic-v2 ``.json(ensure_ascii=...)`` fix: without it the stream dies with a TypeError."""
    question = QUESTIONS[0]
    full = chat(servers, question)["choices"][0]["message"]["content"]
    with http.post(servers.api_url + "/v1/chat/completions", stream=True, timeout=120, json={
            "model": MODEL, "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_tokens": MAX_TOKENS, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks and all("error_code" not in c and no_spec_field(c) for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    # FastChat's stream generator drops U+FFFD (undecodable byte tokens) from deltas.
    assert streamed == full.replace("\ufffd", "")
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    servers.check_alive()
    assert "dumps_kwargs" not in servers.logs()


def test_concurrent_requests_give_the_sequential_answers(servers):
    """Five requests in flight at once on one model (FastChat runs them in threads)."""
    questions = QUESTIONS[:5]
    sequential = {q: chat(servers, q)["choices"][0]["message"]["content"] for q in questions}
    results, errors = {}, []

    def ask(q):
        try:
            results[q] = chat(servers, q)["choices"][0]["message"]["content"]
        except (AssertionError, requests.RequestException) as e:  # reported below, with the question
            errors.append((q, repr(e)))

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors
    assert results == sequential


def test_concurrent_streams_give_the_sequential_answers(servers):
    questions = QUESTIONS[:3]
    sequential = {q: servers.worker_stream({"prompt": q, "temperature": 0, "max_new_tokens": MAX_TOKENS,
                                            "echo": False})[-1]["text"] for q in questions}
    results = {}

    def ask(q):
        results[q] = servers.worker_stream({"prompt": q, "temperature": 0, "max_new_tokens": MAX_TOKENS,
                                            "echo": False})[-1]["text"]

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert results == sequential


# -- /v1/completions -------------------------------------------------------------------


def test_completion_equals_fastchat_on_the_base(servers, stock_texts):
    prompt = "The dog jumps into the water because"
    r = http.post(servers.api_url + "/v1/completions", timeout=120, json={
        "model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 24})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["text"] == stock_texts.text(prompt, 24)
    assert out["usage"]["completion_tokens"] == 24
    assert no_spec_field(out)


def test_completion_streaming(servers):
    prompt = "The cat runs over the house."
    body = {"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 20}
    full = http.post(servers.api_url + "/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]
    with http.post(servers.api_url + "/v1/completions", json={**body, "stream": True}, stream=True,
                   timeout=120) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in events[:-1]) == full.replace("\ufffd", "")


def test_completion_logprobs_equal_fastchats_streamed_or_not(servers, stock_texts):
    """/v1/completions' logprobs (with and without echo) are FastChat's, through the unchanged API server."""
    prompt = "The dog jumps into the water because"
    for echo in (False, True):
        body = {"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 16, "logprobs": 1, "echo": echo}
        r = http.post(servers.api_url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        logprobs = r.json()["choices"][0]["logprobs"]
        stock = stock_texts.last(prompt, 16, logprobs=1, echo=echo)["logprobs"]
        assert logprobs["tokens"] == stock["tokens"] and logprobs["text_offset"] == stock["text_offset"]
        assert logprobs["token_logprobs"] == pytest.approx(stock["token_logprobs"], abs=1e-4)
        with http.post(servers.api_url + "/v1/completions", json={**body, "stream": True}, stream=True,
                       timeout=120) as streamed:
            events = [e for e in sse_events(streamed)[:-1] if e["choices"][0].get("logprobs")]
        assert events and max((e["choices"][0]["logprobs"] for e in events), key=lambda x: len(x["tokens"])) \
            == logprobs


def test_embeddings_are_the_base_models(servers, base_model, base_dir):
    """/v1/embeddings reaches the worker's model, our SpecModel, whose plain call is the base's: FastChat's
    mean of the base's last hidden states, normalised (one text a request: FastChat pads a batch)."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir, use_fast=False)
    for text in ["Hello world", "Why is the river fast?"]:
        r = http.post(servers.api_url + "/v1/embeddings", json={"model": MODEL, "input": text}, timeout=120)
        assert r.status_code == 200, r.text
        ids = torch.tensor([tok(text).input_ids])
        with torch.no_grad():
            hidden = base_model(ids, output_hidden_states=True).hidden_states[-1][0]
        expected = torch.nn.functional.normalize(hidden.mean(0), dim=0)
        assert r.json()["data"][0]["embedding"] == pytest.approx(expected.tolist(), abs=1e-4)


# -- the worker stream carries our statistics ----------------------------------------------


def test_worker_stream_carries_spec_statistics(servers):
    chunks = servers.worker_stream({"prompt": "Why is the river fast?", "temperature": 0,
                                    "max_new_tokens": MAX_TOKENS, "echo": False})
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk["error_code"] == 0
        stats = chunk["spec"]
        assert set(stats) == {"steps", "tokens", "accepted"}
        assert 1 <= stats["steps"] <= stats["tokens"]
        assert len(stats["accepted"]) == stats["steps"] - 1
    assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS
    assert chunks[-1]["finish_reason"] == "length"


def test_spec_disable_over_the_worker_gives_the_same_text(servers):
    params = {"prompt": "Write a poem about fire.", "temperature": 0, "max_new_tokens": 16, "echo": False}
    fast = servers.worker_stream(params)[-1]
    plain = servers.worker_stream({**params, "spec_disable": True})[-1]
    assert plain["text"] == fast["text"]
    assert plain["spec"]["steps"] == plain["spec"]["tokens"]


# -- bad input comes back as FastChat errors, and the worker keeps serving -------------------


def assert_still_serving(servers):
    out = chat(servers, "Hello world, how are you?", max_tokens=8)
    assert out["choices"][0]["message"]["content"]
    servers.check_alive()


@pytest.mark.parametrize("params,message,code", [
    ({"stop": 5}, "stop must be a string or a list of strings", 40302),  # ErrorCode.PARAM_OUT_OF_RANGE
    ({"max_new_tokens": 5000}, "does not fit the model's context of 1024 tokens", 40303),  # CONTEXT_OVERFLOW
    ({"temperature": -1}, "temperature must be >= 0", 40302),
])
def test_worker_level_errors_use_fastchats_error_code(servers, params, message, code):
    base = {"prompt": "Hello", "temperature": 0, "max_new_tokens": 8}
    chunks = servers.worker_stream({**base, **params})
    assert len(chunks) == 1
    assert chunks[0]["error_code"] == code  # FastChat's ErrorCode for the reason, as its API server uses them
    assert message in chunks[0]["text"]
    r = http.post(servers.worker_url + "/worker_generate", json={"model": MODEL, **base, **params}, timeout=60)
    assert r.json()["error_code"] == code and message in r.json()["text"]
    assert_still_serving(servers)


def test_more_bad_requests_than_worker_slots_do_not_leak_them(servers):
    """Each failed request must give its concurrency slot back (limit is 5)."""
    for _ in range(7):
        assert servers.worker_stream({"prompt": "Hello", "stop": 5, "max_new_tokens": 8})[0]["error_code"] != 0
    assert_still_serving(servers)


def test_prompt_longer_than_the_context_over_the_api(servers):
    long_prompt = "the cat runs over the house " * 300
    r = http.post(servers.api_url + "/v1/completions", timeout=60, json={
        "model": MODEL, "prompt": long_prompt, "temperature": 0, "max_tokens": 8})
    assert r.status_code == 400
    err = r.json()
    assert err["object"] == "error" and err["code"] == 40303  # ErrorCode.CONTEXT_OVERFLOW
    assert "maximum context length is 1024 tokens" in err["message"]
    assert_still_serving(servers)


def test_api_validation_errors(servers):
    r = http.post(servers.api_url + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "temperature": -1})
    assert r.status_code == 400 and r.json()["code"] == 40302  # ErrorCode.PARAM_OUT_OF_RANGE
    r = http.post(servers.api_url + "/v1/chat/completions", timeout=60, json={
        "model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400 and "Only medusa-vicuna-tiny allowed" in r.json()["message"]
    assert_still_serving(servers)


# -- the API server's streams ---------------------------------------------------------------


def test_api_server_streams_share_one_http_client_and_read_fastchats_chunks(servers, monkeypatch, tmp_path):
    """FastChat's API server opened an httpx client, with a fresh TLS context (about 20 ms of its only
    thread), for every streamed completion. Patched, every stream uses one client and reads the same
    chunks from the worker as FastChat's own function."""
    import asyncio

    import fastchat.utils
    import httpx

    monkeypatch.setattr(fastchat.utils, "LOGDIR", str(tmp_path))  # its import opens a log file there
    from fastchat.serve import openai_api_server as main

    from fastchat_spec import api_dispatch

    stock = main.generate_completion_stream
    monkeypatch.setattr(main, "generate_completion_stream", stock)
    api_dispatch.patch_stream_client(main)
    built = []

    class CountedClient(httpx.AsyncClient):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(httpx, "AsyncClient", CountedClient)
    payload = {"model": MODEL, "prompt": "Why is the river fast?", "temperature": 0, "max_new_tokens": MAX_TOKENS,
               "echo": False}

    async def read(stream):
        return [chunk async for chunk in stream(payload, servers.worker_url)]

    async def both():
        return await read(stock), await read(main.generate_completion_stream), \
            await read(main.generate_completion_stream)

    theirs, ours, again = asyncio.run(both())
    # How many chunks the worker sends depends on how fast they are read (a reader that falls behind gets the
    # steps since its last read in one chunk), so the streams are compared by what they carry, not by chunking.
    for chunks in (theirs, ours, again):
        assert len(chunks) > 1 and all(chunk["error_code"] == 0 for chunk in chunks)
        counts = [chunk["usage"]["completion_tokens"] for chunk in chunks]
        assert counts == sorted(counts)
    assert ours[-1] == again[-1] == theirs[-1]  # the same answer, usage and statistics
    assert len(built) == 2  # FastChat's stream built one; ours one for both of its streams


def test_api_server_look_ups_share_kept_alive_connections_and_answer_as_fastchats(servers, monkeypatch, tmp_path):
    """Before each generation FastChat's API server asks the controller and the worker five things,
    and its fetch_remote built a new aiohttp session (and connection) for every one. Patched, the
    answers are FastChat's, errors included, and one session serves them all."""
    import asyncio

    import aiohttp
    import fastchat.utils

    monkeypatch.setattr(fastchat.utils, "LOGDIR", str(tmp_path))  # its import opens a log file there
    from fastchat.serve import openai_api_server as main

    from fastchat_spec import api_dispatch

    stock = main.fetch_remote
    monkeypatch.setattr(main, "fetch_remote", stock)
    api_dispatch.patch_fetch_remote(main)
    built, session_class = [], aiohttp.ClientSession

    def counted_session(*args, **kwargs):
        built.append(1)
        return session_class(*args, **kwargs)

    monkeypatch.setattr(aiohttp, "ClientSession", counted_session)
    calls = [(servers.controller_url + "/list_models", None, "models"),
             (servers.controller_url + "/get_worker_address", {"model": MODEL}, "address"),
             (servers.worker_url + "/model_details", {"model": MODEL}, "context_length"),
             (servers.worker_url + "/count_token", {"model": MODEL, "prompt": "Why is the river fast?"}, "count"),
             (servers.worker_url + "/no_such_endpoint", {}, "text")]

    async def ask(fetch):
        return [await fetch(*call) for call in calls]

    async def both():
        theirs = await ask(stock)
        built_by_fastchat = len(built)
        ours = await ask(main.fetch_remote) + await ask(main.fetch_remote)
        await api_dispatch.shared_session().close()
        return theirs, ours, built_by_fastchat

    theirs, ours, built_by_fastchat = asyncio.run(both())
    assert ours == theirs + theirs
    assert theirs[0] == [MODEL] and theirs[1] == servers.worker_url and theirs[3] > 0
    assert json.loads(theirs[4])["error_code"] != 0  # FastChat's error answer for a status other than 200
    assert built_by_fastchat == len(calls)
    assert len(built) - built_by_fastchat == 1  # ours: one session for ten calls
