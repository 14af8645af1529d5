"""Bad requests and broken checkpoints fail early, with messages a user can act on."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import unicodedata

import pytest
import torch
from fastchat.constants import ErrorCode
from fastchat.model.model_adapter import get_generate_stream_function, load_model

from fastchat_spec.adapters.medusa import write_medusa_checkpoint
from fastchat_spec.generate.request import RequestError
from fastchat_spec.heads.medusa import MedusaHeads
from tests import tiny
from tests.tiny import CONTEXT


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
    ({"max_new_tokens": float("inf")}, "max_new_tokens must be an integer, got inf"),
    ({"temperature": "hot"}, "temperature must be a finite number"),
    ({"temperature": float("nan")}, "temperature must be a finite number, got nan"),
    ({"top_p": -0.1}, r"top_p must be in \[0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \[0, 1\]"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
    ({"stop": 5}, "stop must be a string or a list of strings"),
    ({"stop": ["ok", 3]}, "stop must be a string or a list of strings"),
    ({"stop_token_ids": "2"}, "stop_token_ids must be a list of token ids"),
    ({"stop_token_ids": [2, "x"]}, "stop_token_ids must be a list of token ids"),
    ({"stop_token_ids": [-1]}, "stop_token_ids must be a list of token ids"),
    ({"stop_token_ids": [2**70]}, "stop_token_ids must be a list of token ids"),
    ({"stop_token_ids": [True]}, "stop_token_ids must be a list of token ids"),
    ({"prompt": None}, "prompt must be a string"),
    ({"prompt": "half an emoji \ud83d"}, "prompt is not valid Unicode: lone surrogate"),
    ({"logprobs": -1}, "logprobs must be an integer >= 0"),
    ({"logprobs": "yes"}, "logprobs must be an integer >= 0"),
    ({"logprobs": 1.5}, "logprobs must be an integer >= 0"),
    ({"spec_options": [1]}, "spec_options must be an object"),
    ({"spec_acceptance": "fast"}, "unknown acceptance rule"),
])
def test_bad_request_raises_value_error(spec, params, message):
    with pytest.raises(ValueError, match=message):
        _first(spec, params)


def test_prompt_longer_than_the_context_keeps_its_end_as_fastchat(spec, base_dir):
    """FastChat's decoder keeps the last tokens of a prompt longer than the context (its CLI relies on it once
    a chat outgrows the context); ours answers the same."""
    from fastchat.serve.inference import generate_stream as fastchat_generate_stream

    model, tok, stream = spec
    prompt = "the cat runs over the house " * 20
    assert len(tok(prompt).input_ids) > 64
    params = {"prompt": prompt, "temperature": 0.0, "max_new_tokens": 8, "echo": False}
    ours = list(stream(model, tok, dict(params), "cpu", 64))[-1]
    base, base_tok = load_model(base_dir, device="cpu")
    stock = list(fastchat_generate_stream(base, base_tok, dict(params), "cpu", 64))[-1]
    assert ours["text"] == stock["text"]
    assert ours["usage"]["prompt_tokens"] == stock["usage"]["prompt_tokens"] == 64 - 8 - 1


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


def _text(spec, params, context=CONTEXT):
    model, tok, stream = spec
    base = {"prompt": "Hello world", "max_new_tokens": 8, "echo": False}
    return list(stream(model, tok, {**base, **params}, "cpu", context))[-1]["text"]


def test_top_p_zero_is_greedy_as_in_fastchat(spec):
    assert _text(spec, {"temperature": 0.9, "top_p": 0.0}) == _text(spec, {"temperature": 0.0})


class _UntouchableTokenizer:
    """Fails the test if asked to tokenize: a prompt that long must be refused before."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        raise AssertionError("the megabyte prompt was tokenized")

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_a_megabyte_prompt_is_refused_without_tokenizing_it(spec):
    model, tok, stream = spec
    prompt = "Hello world, how are you? " * 40_000  # ~1 MB
    with pytest.raises(RequestError, match=r"the prompt is 1040000 characters, more than the model's context of "
                                           rf"{CONTEXT} tokens can hold") as info:
        next(stream(model, _UntouchableTokenizer(tok), {"prompt": prompt, "max_new_tokens": 8}, "cpu", CONTEXT))
    assert info.value.error_code == ErrorCode.CONTEXT_OVERFLOW


@pytest.mark.parametrize("params,code", [
    ({"max_new_tokens": CONTEXT}, ErrorCode.CONTEXT_OVERFLOW),
    ({"prompt": "the cat " * 130_000}, ErrorCode.CONTEXT_OVERFLOW),  # past what the context can hold
    ({"temperature": -1}, ErrorCode.PARAM_OUT_OF_RANGE),
    ({"stop": 5}, ErrorCode.PARAM_OUT_OF_RANGE),
])
def test_refusals_carry_fastchats_error_code(spec, params, code):
    with pytest.raises(RequestError) as info:
        _first(spec, params)
    assert info.value.error_code == code


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


def _edit_heads(ckpt: str, edit) -> str:
    """Rewrite the checkpoint's head file with ``edit(state dict)``; returns the file."""
    file = os.path.join(ckpt, "medusa_lm_head.pt")
    torch.save(edit(torch.load(file, weights_only=True)), file)
    return file


def test_unexpected_tensor_in_head_file(tmp_path, base_dir):
    file = _edit_heads(_checkpoint(tmp_path, base_dir), lambda state: {**state, "rogue.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=f"unexpected tensor 'rogue.weight' in Medusa head file {file}"):
        load_model(os.path.dirname(file), device="cpu")


def test_gap_in_head_indices(tmp_path, base_dir):
    ckpt = _checkpoint(tmp_path, base_dir)
    _edit_heads(ckpt, lambda state: {("2." + k[2:] if k.startswith("1.") else k): v for k, v in state.items()})
    with pytest.raises(ValueError, match=r"gaps in its head indices: \[0, 2\]"):
        load_model(ckpt, device="cpu")


def test_invalid_config_json_is_named(tmp_path, base_dir):
    ckpt = _checkpoint(tmp_path, base_dir)
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        f.write('{"medusa_num_heads": 2,')
    with pytest.raises(ValueError, match=f"{os.path.join(ckpt, 'config.json')} is not valid JSON"):
        load_model(ckpt, device="cpu")


def test_missing_base_path_says_how_to_fix(tmp_path, base_dir, no_base_override):
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


# -- over HTTP: the OpenAI API server and the worker, as users reach them ----------------------
#
# Every case is recorded as it was observed; FASTCHAT_SPEC_WRITE_DOCS=1 writes the table in
# docs/bad_input.md from these records.

MODEL = "medusa-vicuna-tiny"
CHAT, COMPLETIONS, STREAM = "/v1/chat/completions", "/v1/completions", "/worker_generate_stream"
MEGABYTE = "Hello world, how are you? " * 38_462  # 1,000,012 characters
MIXED = ("Καλημέρα κόσμε! こんにちは世界 🌍🚀👩🏽‍💻 مرحبا بالعالم — Привет, мир! "
         "naïve café e\u0301 🇫🇷 ½ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🙂🙃 " * 4)
NO_SUCH_STOPS = [f"qzx{i}" for i in range(10_000)]
OBSERVED: list[tuple[str, str, str, str]] = []  # case, what was sent, where, the answer
DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "bad_input.md")


@pytest.fixture(scope="module")
def servers(medusa_dir, tmp_path_factory):
    from tests.servers import FastChatServers

    log_dir = str(tmp_path_factory.mktemp("bad_input_logs"))
    with FastChatServers(medusa_dir, None, log_dir, model_name=MODEL) as stack:
        yield stack
    if os.environ.get("FASTCHAT_SPEC_WRITE_DOCS") == "1":
        _write_table(DOC, OBSERVED)


def _http():
    from tests.servers import local_session

    return local_session()


http = _http()


def record(case: str, sent: str, where: str, answer: str) -> None:
    OBSERVED.append((case, sent, where, answer))


def post(url: str, body, timeout: float = 120):
    """``body``: a dict (sent as JSON) or bytes (sent as they are)."""
    if isinstance(body, (bytes, str)):
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        return http.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=timeout)
    return http.post(url, json=body, timeout=timeout)


def chat_body(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hello world, how are you?"}],
            "temperature": 0, "max_tokens": 8, **extra}


def api_answer(r) -> str:
    if r.status_code != 200:
        body = r.json()
        code = f", code {body['code']}" if "code" in body else ""
        return f"HTTP {r.status_code}{code}: {_shorten(body.get('message') or body.get('detail'))}"
    choices = r.json()["choices"]
    return f"HTTP 200, answered: {len(choices)} choice(s), finish_reason {choices[0]['finish_reason']}"


def worker_answer(r) -> str:
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {_shorten(r.json()['detail'])}"
    last = [json.loads(c) for c in r.content.split(b"\0") if c][-1]
    if last["error_code"]:
        return f"HTTP 200, error chunk, error_code {last['error_code']}: {_shorten(last['text'])}"
    return f"HTTP 200, answered: finish_reason {last['finish_reason']}, {last['usage']['completion_tokens']} tokens"


def _shorten(message, limit: int = 230) -> str:
    import re

    text = str(message)
    found = re.search(r"""'msg': (?:'([^']*)'|"([^"]*)")""", text)
    if found:  # FastChat's validation handler returns pydantic's whole error list
        text = "validation error: " + (found.group(1) or found.group(2))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _took(r, case: str) -> str:
    """How long the megabyte took, for the table (observed, not asserted: machines differ)."""
    return f" (answered in {r.elapsed.total_seconds():.1f} s)" if case == "1 MB prompt" else ""


def assert_still_serving(servers) -> None:
    """The next normal request through the API succeeds, and no worker slot is left taken."""
    from tests.test_worker_gate import wait_until_idle

    r = post(servers.api_url + CHAT, chat_body())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
    servers.check_alive()
    wait_until_idle(servers.processes[1], servers.worker_url)


def _long_prompt() -> str:
    return "the cat runs over the house " * 300  # 6.6k tokens of the tiny tokenizer; the context is 1024


@pytest.mark.parametrize("case,sent,path,body,code,message", [
    ("empty messages", "`messages: []`", CHAT, chat_body(messages=[]), 40001, "messages is empty"),
    ("unknown role", "`role: \"bot\"`", CHAT, chat_body(messages=[{"role": "bot", "content": "Hi"}]), 40001,
     "use one of system, user, assistant"),
    ("prompt over the context", "a completion prompt of 8,400 characters", COMPLETIONS,
     {"model": MODEL, "prompt": _long_prompt(), "max_tokens": 8}, 40303, "maximum context length is 1024 tokens"),
    ("1 MB prompt", "a user message of 1,000,012 characters", CHAT,
     chat_body(messages=[{"role": "user", "content": MEGABYTE}]), 40303, "maximum context length is 1024 tokens"),
    ("max_tokens 0", "`max_tokens: 0`", CHAT, chat_body(max_tokens=0), 40302, "less than the minimum of 1"),
    ("max_tokens negative", "`max_tokens: -5`", CHAT, chat_body(max_tokens=-5), 40302, "less than the minimum of 1"),
    ("temperature negative", "`temperature: -1`", CHAT, chat_body(temperature=-1), 40302,
     "less than the minimum of 0 - 'temperature'"),
    ("temperature huge", "`temperature: 100`", CHAT, chat_body(temperature=100), 40302,
     "greater than the maximum of 2 - 'temperature'"),
    ("top_p above 1", "`top_p: 1.5`", CHAT, chat_body(top_p=1.5), 40302, "greater than the maximum of 1 - 'top_p'"),
    ("top_p negative", "`top_p: -0.5`", CHAT, chat_body(top_p=-0.5), 40302, "less than the minimum of 0 - 'top_p'"),
    ("logprobs (chat)", "`logprobs: true`", CHAT, chat_body(logprobs=True), 40001,
     "logprobs is not served by FastChat 0.2.36's /v1/chat/completions"),
    ("logprobs (completions) negative", "`logprobs: -1`", COMPLETIONS,
     {"model": MODEL, "prompt": "Hello", "max_tokens": 8, "logprobs": -1}, 40302,
     "logprobs must be an integer >= 0"),
    ("wrong type", "`temperature: \"hot\"`", CHAT, chat_body(temperature="hot"), 40001, "valid number"),
    ("invalid JSON", "`{\"model\": \"medusa-vicuna-tiny\", \"messages\": [` (cut off)", CHAT,
     b'{"model": "medusa-vicuna-tiny", "messages": [', 40001, "JSON decode error"),
    ("lone surrogate", "content `\"Hi \\ud83d\"` (half an emoji)", CHAT,
     '{"model": "medusa-vicuna-tiny", "messages": [{"role": "user", "content": "Hi \\ud83d"}]}', 40001,
     "lone surrogate"),
    ("empty prompt list", "completions `prompt: []`", COMPLETIONS, {"model": MODEL, "prompt": []}, 40001,
     "prompt is an empty list"),
])
def test_api_refuses_with_a_reason(servers, case, sent, path, body, code, message):
    r = post(servers.api_url + path, body)
    record(case, sent, f"API `{path}`", api_answer(r) + _took(r, case))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code and message in r.json()["message"], r.text
    assert_still_serving(servers)


def test_api_invalid_utf8(servers):
    body = b'{"model": "medusa-vicuna-tiny", "messages": [{"role": "user", "content": "caf\xe9"}]}'
    r = post(servers.api_url + CHAT, body)
    record("invalid UTF-8", "a body with the Latin-1 byte `0xe9`", f"API `{CHAT}`", api_answer(r))
    assert r.status_code == 400 and r.json() == {"detail": "There was an error parsing the body"}  # FastAPI's words
    assert_still_serving(servers)


def test_api_deeply_nested_json_is_refused_and_the_server_goes_on(servers):
    r = post(servers.api_url + CHAT, b"[" * 100_000)
    record("deeply nested JSON", "100,000 `[`", f"API `{CHAT}`", api_answer(r))
    assert r.status_code == 400, r.text
    assert_still_serving(servers)


def test_api_max_tokens_huge_is_cut_to_what_the_context_leaves(servers):
    def count(text: str) -> int:
        return post(servers.worker_url + "/count_token", {"prompt": text}).json()["count"]

    unit = "the cat runs over the house "
    prompt = unit * ((1024 - 24) * 10 // count(unit * 10))  # leaves a few tokens of context for the answer
    n_prompt = count(prompt)
    r = post(servers.api_url + COMPLETIONS, {"model": MODEL, "prompt": prompt, "max_tokens": 10**9, "temperature": 0})
    record("max_tokens huge", f"`max_tokens: 10**9`, a prompt of {n_prompt} tokens", f"API `{COMPLETIONS}`",
           api_answer(r) + " (FastChat cuts max_tokens to the context left)")
    assert r.status_code == 200, r.text
    assert 0 < r.json()["usage"]["completion_tokens"] <= 1024 - n_prompt
    assert_still_serving(servers)


def _chat_text(servers, **extra) -> str:
    r = post(servers.api_url + CHAT, chat_body(**extra))
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_api_top_p_zero_is_greedy(servers):
    r = post(servers.api_url + CHAT, chat_body(temperature=0.9, top_p=0))
    record("top_p 0", "`top_p: 0, temperature: 0.9`", f"API `{CHAT}`", api_answer(r) + " (greedy, as FastChat)")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == _chat_text(servers)


def test_api_n_above_1_gives_n_answers(servers):
    """FastChat's API server asks the worker n times: n independent answers, identical when greedy."""
    r = post(servers.api_url + CHAT, chat_body(n=3))
    record("n > 1", "`n: 3, temperature: 0`", f"API `{CHAT}`", api_answer(r) + " (n worker calls; greedy: equal)")
    assert r.status_code == 200, r.text
    assert [c["message"]["content"] for c in r.json()["choices"]] == [_chat_text(servers)] * 3
    sampled = post(servers.api_url + CHAT, chat_body(n=2, temperature=1.0, max_tokens=16)).json()["choices"]
    assert [c["index"] for c in sampled] == [0, 1]


def test_api_huge_stop_list_is_served(servers):
    r = post(servers.api_url + CHAT, chat_body(stop=NO_SUCH_STOPS))
    record("huge stop list", "`stop`: 10,000 strings that never occur", f"API `{CHAT}`", api_answer(r))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == _chat_text(servers)


def test_api_emoji_and_mixed_scripts_stream_as_they_answer(servers):
    body = chat_body(messages=[{"role": "user", "content": MIXED}], max_tokens=24)
    r = post(servers.api_url + CHAT, body)
    full = r.content.decode("utf-8")  # strict: valid UTF-8
    with http.post(servers.api_url + CHAT, json={**body, "stream": True}, stream=True, timeout=120) as s:
        raw = b"".join(s.iter_content(None))
    events = [line[len(b"data: "):] for line in raw.split(b"\n\n") if line.startswith(b"data: ")]
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                       for e in events[:-1] if json.loads(e).get("choices"))
    record("emoji and mixed scripts", "Greek, Japanese, Arabic, Cyrillic, emoji with ZWJ and skin tones, "
           "combining accents, flags, math letters", f"API `{CHAT}`, stream and not", api_answer(r) +
           "; the stream's text equals it")
    assert r.status_code == 200 and events[-1] == b"[DONE]"
    raw.decode("utf-8")
    # FastChat's API server drops U+FFFD from streamed deltas only
    assert streamed == json.loads(full)["choices"][0]["message"]["content"].replace("\ufffd", "")


# -- straight at the worker -------------------------------------------------------------------


def worker_body(**extra) -> dict:
    return {"model": MODEL, "prompt": "Hello world", "temperature": 0, "max_new_tokens": 8, "echo": False, **extra}


@pytest.mark.parametrize("case,sent,body,status,code,message", [
    ("not an object", "`[]`", b"[]", 400, None, "a generate request is a JSON object with a 'prompt' string"),
    ("no prompt", "`{}`", b"{}", 400, None, "prompt must be a string, got null"),
    ("prompt not a string", "`{\"prompt\": 5}`", b'{"prompt": 5}', 400, None,
     "prompt must be a string, got the number 5"),
    ("invalid JSON", "`{\"prompt\": ` (cut off)", b'{"prompt": ', 400, None, "the request body is not valid JSON"),
    ("invalid UTF-8", "a body with the Latin-1 byte `0xe9`", b'{"prompt": "caf\xe9"}', 400, None, "not UTF-8"),
    ("deeply nested JSON", "100,000 `[`", b"[" * 100_000, 400, None, "nested too deeply"),
    ("lone surrogate", "prompt `\"Hi \\ud83d\"`", b'{"prompt": "Hi \\ud83d"}', 400, None, "lone surrogate"),
    ("1 MB prompt", "a prompt of 1,000,012 characters", worker_body(prompt=MEGABYTE), 200, 40303,
     "characters, more than the model's context of 1024 tokens can hold"),
    ("max_new_tokens 0", "`max_new_tokens: 0`", worker_body(max_new_tokens=0), 200, 40302, "must be > 0"),
    ("max_new_tokens negative", "`max_new_tokens: -3`", worker_body(max_new_tokens=-3), 200, 40302, "must be > 0"),
    ("max_new_tokens huge", "`max_new_tokens: 10**9`", worker_body(max_new_tokens=10**9), 200, 40303,
     "does not fit the model's context of 1024 tokens"),
    ("max_new_tokens infinite", "`max_new_tokens: 1e400`", b'{"prompt": "Hi", "max_new_tokens": 1e400}', 200, 40302,
     "max_new_tokens must be an integer, got inf"),
    ("max_new_tokens wrong type", "`max_new_tokens: \"many\"`", worker_body(max_new_tokens="many"), 200, 40302,
     "max_new_tokens must be an integer"),
    ("temperature negative", "`temperature: -1`", worker_body(temperature=-1), 200, 40302, "temperature must be >= 0"),
    ("temperature NaN", "`temperature: NaN`", b'{"prompt": "Hi", "temperature": NaN}', 200, 40302,
     "temperature must be a finite number"),
    ("top_p above 1", "`top_p: 1.5`", worker_body(top_p=1.5), 200, 40302, "top_p must be in [0, 1]"),
    ("logprobs not a number", "`logprobs: \"all\"`", worker_body(logprobs="all"), 200, 40302,
     "logprobs must be an integer >= 0"),
    ("stop not strings", "`stop: 5`", worker_body(stop=5), 200, 40302, "stop must be a string or a list of strings"),
    ("stop_token_ids not a list", "`stop_token_ids: \"2\"`", worker_body(stop_token_ids="2"), 200, 40302,
     "stop_token_ids must be a list of token ids"),
    ("stop_token_ids negative", "`stop_token_ids: [-1]`", worker_body(stop_token_ids=[-1]), 200, 40302,
     "stop_token_ids must be a list of token ids"),
    ("stop_token_ids huge", "`stop_token_ids: [2**70]`", worker_body(stop_token_ids=[2**70]), 200, 40302,
     "stop_token_ids must be a list of token ids"),
])
def test_worker_refuses_with_a_reason(servers, case, sent, body, status, code, message):
    r = post(servers.worker_url + STREAM, body)
    record(case, sent, "worker `/worker_generate_stream`", worker_answer(r) + _took(r, case))
    assert r.status_code == status, r.text
    if status == 400:
        assert message in r.json()["detail"]
    else:
        chunks = [json.loads(c) for c in r.content.split(b"\0") if c]
        assert len(chunks) == 1 and chunks[0]["error_code"] == code and message in chunks[0]["text"], chunks
    assert_still_serving(servers)


def _worker_final(servers, **extra) -> dict:
    r = post(servers.worker_url + STREAM, worker_body(**extra))
    assert r.status_code == 200, r.text
    return [json.loads(c) for c in r.content.split(b"\0") if c][-1]


@pytest.mark.parametrize("case,sent,extra", [
    ("empty prompt", "`prompt: \"\"`", {"prompt": ""}),
    ("top_p 0", "`top_p: 0, temperature: 0.9` (greedy, as FastChat)", {"top_p": 0, "temperature": 0.9}),
    ("temperature huge", "`temperature: 1e6` (samples from a flat distribution)", {"temperature": 1e6}),
    ("huge stop list", "`stop`: 10,000 strings that never occur", {"stop": NO_SUCH_STOPS}),
    ("stop_token_ids outside the vocabulary", "`stop_token_ids: [999999]` (never generated)",
     {"stop_token_ids": [999_999]}),
    ("logprobs 5", "`logprobs: 5` (each token's logprob; no alternatives, as FastChat)", {"logprobs": 5}),
    ("prompt over the context", "a prompt of 8,400 characters (6,601 tokens; the context is 1024)",
     {"prompt": _long_prompt()}),
])
def test_worker_serves_unusual_but_valid_requests(servers, case, sent, extra):
    r = post(servers.worker_url + STREAM, worker_body(**extra))
    record(case, sent, "worker `/worker_generate_stream`", worker_answer(r))
    out = _worker_final(servers, **extra)
    assert out["error_code"] == 0 and out["finish_reason"] in ("stop", "length"), out
    if "prompt" not in extra and (extra.get("temperature", 0) < 1 or extra.get("top_p") == 0):
        assert out["text"] == _worker_final(servers)["text"]  # greedy: the plain request's text


def test_worker_emoji_and_mixed_scripts_are_not_garbled(servers):
    """Streamed text equals the non-streamed answer and FastChat's own decoder's, echo included."""
    for echo in (False, True):
        params = worker_body(prompt=MIXED, max_new_tokens=24, echo=echo)
        r = post(servers.worker_url + STREAM, params)
        r.content.decode("utf-8")  # strict: valid UTF-8
        chunks = [json.loads(c) for c in r.content.split(b"\0") if c]
        texts = [c["text"] for c in chunks]
        assert all(b.startswith(a) for a, b in itertools.pairwise(texts)), texts  # the text only grows
        whole = post(servers.worker_url + "/worker_generate", params).json()
        stock = _worker_final(servers, **{**params, "spec_disable": True})
        assert chunks[-1]["error_code"] == 0 and texts[-1] == whole["text"] == stock["text"]
        if echo:  # the prompt comes back whole, as the tokenizer normalises it (NFKC: "½" is "1⁄2")
            assert texts[-1].startswith(unicodedata.normalize("NFKC", MIXED).strip())
    record("emoji and mixed scripts", "the same mixed text as the prompt, echo on and off",
           "worker `/worker_generate_stream` and `/worker_generate`",
           worker_answer(r) + "; streamed = non-streamed = FastChat's decoder")


def test_twice_the_limit_of_malformed_bodies_leave_the_worker_serving(servers):
    from tests.test_worker_gate import LIMIT, flood_with_malformed

    assert servers.limit_worker_concurrency == LIMIT
    answers = flood_with_malformed(servers.worker_url, LIMIT)
    assert all(status in (200, 400) for _, _, status, _ in answers), answers
    assert_still_serving(servers)
    refused = sum(status == 400 for _, _, status, _ in answers)
    record(f"{2 * LIMIT} malformed bodies (2 x the worker's limit)", "`[]`, `{}`, a string, `null`, cut-off JSON, "
           "invalid UTF-8, wrong types, `max_new_tokens: 0`", "worker, both generate endpoints",
           f"{refused} x HTTP 400, {len(answers) - refused} x error chunk; then a normal request is answered "
           "and `queue_length` is back to 0")


def _write_table(path: str, rows) -> None:
    """Replace the table between the markers in docs/bad_input.md with what was observed."""
    start, end = "<!-- observed:start -->", "<!-- observed:end -->"
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| case | what was sent | where | answer |", "|---|---|---|---|"]
    lines += [f"| {cell(c)} | {cell(s)} | {cell(w)} | {cell(a)} |" for c, s, w, a in rows]
    head, rest = doc.split(start, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{start}\n" + "\n".join(lines) + f"\n{end}{tail}")
