"""The web UI's statistics plumbing: numbers, charts, provenance, validation, HTML, launch commands.

No browser, no servers: streams are simulated the way ``generate/stream.py``
yields them, and one test runs the real tiny model to check provenance on a
real stream.
"""
from __future__ import annotations

import logging
import os
import socket
from types import SimpleNamespace

import pytest

from fastchat_spec.web.stats import (
    Answer, AnswerStats, ControlError, Provenance, accepted_per_step, check_controls, first_difference,
    token_origins,
)


# -- helpers ---------------------------------------------------------------------
def simulate(pieces: list, accepted: list, interval: int = 2) -> list:
    """Worker chunks for tokens whose texts are ``pieces``, produced in steps that accepted ``accepted``.

    Mirrors ``generate/stream.py``: the prefill gives one token, step s gives
    accepted[s] + 1, a chunk goes out when ``interval`` tokens have gathered,
    and the last one when the tokens run out.
    """
    per_step = [1] + [a + 1 for a in accepted]
    chunks, counted, last = [], 0, 0
    for step, n in enumerate(per_step, start=1):
        counted = min(counted + n, len(pieces))
        done = counted == len(pieces)
        if done or counted - last >= interval:
            last = counted
            spec = {"steps": step, "tokens": sum(per_step[:step]), "accepted": accepted[: step - 1]}
            chunks.append({"text": "".join(pieces[:counted]), "error_code": 0, "spec": spec,
                           "usage": {"prompt_tokens": 5, "completion_tokens": counted, "total_tokens": 5 + counted},
                           "finish_reason": "length" if done else None})
        if done:
            break
    return chunks


class CharTokenizer:
    """One token per character: re-encoding is always exact."""

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=[ord(c) for c in text])

    def decode(self, ids, **kwargs):
        return "".join(chr(i) for i in ids)


class PairTokenizer(CharTokenizer):
    """Encodes two characters per token, so counts never match a one-char-per-token stream."""

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=[ord(c) for c in text[::2]])


def feed(prov: Provenance, chunks: list) -> Provenance:
    for c in chunks:
        prov.add(c["text"], c["usage"]["completion_tokens"], c["spec"])
    return prov


def char_depths(prov: Provenance) -> list:
    return [seg.depth for seg in prov.segments for _ in seg.text]


# -- token origins and numbers -------------------------------------------------------
def test_token_origins_count_drafts_then_one_base_token_per_step():
    spec = {"steps": 4, "tokens": 7, "accepted": [2, 0, 1]}
    origins = token_origins(spec)
    assert origins == [(1, 0), (2, 1), (2, 2), (2, 0), (3, 0), (4, 1), (4, 0)]
    assert len(origins) == spec["tokens"]


def test_stock_spec_field_is_all_base_tokens():
    # _stock_stream reports n tokens as steps = tokens = n + 1 and accepted = [0] * n
    assert token_origins({"steps": 4, "tokens": 4, "accepted": [0, 0, 0]}) == [(1, 0), (2, 0), (3, 0), (4, 0)]


def test_answer_stats_tau_tok_per_s_and_mean_accepted():
    s = AnswerStats()
    s.update({"usage": {"completion_tokens": 3}, "spec": {"steps": 2, "tokens": 3, "accepted": [1]}}, 0.5)
    s.update({"usage": {"completion_tokens": 10}, "finish_reason": "length",
              "spec": {"steps": 5, "tokens": 10, "accepted": [1, 3, 0, 2]}}, 2.0)
    assert s.tok_per_s == pytest.approx(5.0)
    assert s.tokens_per_step == pytest.approx(2.0)
    assert s.mean_accepted == pytest.approx(1.5)
    assert s.first_chunk_seconds == 0.5 and s.finish_reason == "length" and s.has_spec


def test_answer_stats_without_spec_field():
    s = AnswerStats()
    s.update({"text": "hi", "usage": {"completion_tokens": 4}}, 1.0)
    assert not s.has_spec and s.tokens_per_step is None and s.mean_accepted is None
    assert s.tok_per_s == pytest.approx(4.0)


def test_chart_data_numbers_verification_steps_after_the_prefill():
    assert accepted_per_step([2, 0, 3]) == {"step": [2, 3, 4], "accepted": [2, 0, 3]}
    assert accepted_per_step([]) == {"step": [], "accepted": []}


def test_first_difference():
    assert first_difference("abc", "abc") is None
    assert first_difference("abc", "abd") == 2
    assert first_difference("ab", "abc") == 2


# -- provenance ------------------------------------------------------------------------
ACCEPTED = [2, 0, 0, 3, 1, 0, 2, 0, 3, 0, 2, 0]  # 26 tokens in all, one per character of TEXT
TEXT = "The quick brown fox jumps."


def test_token_level_shading_gives_each_character_its_draft_depth():
    pieces = list(TEXT)
    prov = feed(Provenance(CharTokenizer()), simulate(pieces, ACCEPTED))
    assert prov.level == "token"
    assert "".join(s.text for s in prov.segments) == TEXT
    expected = [d for _, d in token_origins({"accepted": ACCEPTED})][: len(TEXT)]
    assert char_depths(prov) == expected
    assert prov.max_depth == 3


def test_step_level_shading_without_a_tokenizer():
    pieces = list(TEXT)
    chunks = simulate(pieces, ACCEPTED)
    prov = feed(Provenance(None), chunks)
    assert prov.level == "step"
    assert "".join(s.text for s in prov.segments) == TEXT
    assert len(prov.segments) == len(chunks)
    origins = token_origins({"accepted": ACCEPTED})
    lo = 0
    for seg, chunk in zip(prov.segments, chunks):
        hi = chunk["usage"]["completion_tokens"]
        assert seg.depth == max(d for _, d in origins[lo:hi])  # the deepest accepted draft in the chunk
        assert seg.steps == tuple(sorted({s for s, _ in origins[lo:hi]}))
        lo = hi


def test_tokenizer_that_does_not_reproduce_the_counts_falls_back_to_steps():
    prov = feed(Provenance(PairTokenizer()), simulate(list(TEXT), ACCEPTED))
    assert prov.level == "step"
    assert "".join(s.text for s in prov.segments) == TEXT


def test_text_cut_by_a_stop_string_keeps_earlier_chunks_token_level():
    chunks = simulate(list(TEXT), ACCEPTED)
    last = dict(chunks[-1], text=chunks[-1]["text"][:-1])  # a stop string removed a counted token
    prov = feed(Provenance(CharTokenizer()), chunks[:-2] + [last])
    assert prov.level == "mixed"
    assert prov.segments[-1].level == "step"
    assert "".join(s.text for s in prov.segments) == last["text"]


def test_stream_that_rewrites_its_text_keeps_the_common_prefix():
    prov = Provenance(None)
    prov.add("Hello wor", 3, {"steps": 2, "tokens": 3, "accepted": [1]})
    prov.add("Hello there", 5, {"steps": 3, "tokens": 5, "accepted": [1, 1]})
    assert "".join(s.text for s in prov.segments) == "Hello there"


def test_chunks_without_spec_are_unshaded():
    prov = Provenance(CharTokenizer())
    prov.add("abc", 3, None)
    assert prov.level == "none" and prov.segments[0].depth is None and prov.segments[0].level == "unknown"


def test_real_tokenizer_and_real_stream(tmp_path, base_dir):
    """Oracle Medusa heads on the tiny Llama: most chunks split per token, depths follow spec.accepted."""
    from fastchat.model.model_adapter import get_conversation_template, get_generate_stream_function, load_model

    from fastchat_spec.adapters.medusa import write_medusa_checkpoint
    from fastchat_spec.generate.tree import chain
    from tests import tiny

    ckpt = str(tmp_path / "medusa-oracle")
    write_medusa_checkpoint(ckpt, tiny.oracle_medusa_heads(base_dir, 3), base_dir, tree=chain(3).to_list())
    model, tok = load_model(ckpt, device="cpu")
    stream = get_generate_stream_function(model, ckpt)
    conv = get_conversation_template(ckpt)  # vicuna_v1.1, as the UI builds it
    conv.append_message(conv.roles[0], "Tell me about the house and the tree.")
    conv.append_message(conv.roles[1], None)
    params = {"prompt": conv.get_prompt(), "temperature": 0.0, "max_new_tokens": 48, "echo": False}
    answer = Answer(tok)
    for i, chunk in enumerate(stream(model, tok, params, "cpu", 1024, 2)):
        answer.add(dict(chunk, error_code=0), 0.1 * (i + 1))
    prov = answer.provenance
    assert "".join(s.text for s in prov.segments) == answer.text
    assert prov.token_level_chunks > 0 and prov.max_depth >= 1
    assert answer.stats.tokens_per_step > 1.0


# -- controls: the OpenAI API server's rules and messages ----------------------------------
GRID = [(t, p, m) for t in (-0.5, 0.0, 0.7, 2.0, 2.5) for p in (-0.1, 0.0, 0.9, 1.0, 1.5) for m in (-1, 0, 1, 256)]


@pytest.fixture(scope="module")
def fastchat_check_requests():
    """FastChat's check_requests, imported without letting its logger take over this process's stdout."""
    import fastchat.utils

    mp = pytest.MonkeyPatch()
    mp.setattr(fastchat.utils, "build_logger", lambda *a, **k: logging.getLogger("openai_api_server"))
    try:
        from fastchat.serve.openai_api_server import check_requests
    finally:
        mp.undo()
    return check_requests


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # FastChat calls pydantic's .dict()
def test_controls_follow_fastchat_api_rules_and_messages(fastchat_check_requests):
    import json

    for temperature, top_p, max_tokens in GRID:
        request = SimpleNamespace(max_tokens=max_tokens, n=1, temperature=temperature, top_p=top_p, top_k=None,
                                  stop=None)
        response = fastchat_check_requests(request)
        expected = None if response is None else json.loads(response.body)["message"]
        try:
            check_controls(temperature, top_p, max_tokens)
            got = None
        except ControlError as e:
            got = str(e)
        assert got == expected, (temperature, top_p, max_tokens)


def test_controls_reject_empty_fields():
    with pytest.raises(ControlError, match="temperature is required"):
        check_controls(None, 1.0, 10)
    with pytest.raises(ControlError, match="max_tokens"):
        check_controls(0.0, 1.0, 2.5)


def test_worker_error_becomes_a_message():
    answer = Answer()
    answer.add({"text": "**NETWORK ERROR**\n\n(max_new_tokens=5000 does not fit)", "error_code": 50001}, 0.1)
    assert answer.state == "error"
    assert "error 50001" in answer.error and "does not fit" in answer.error


# -- HTML and handlers -------------------------------------------------------------------
# The UI's modules are imported by fixtures: importing Gradio is slow, and the tests above do without it.
@pytest.fixture(scope="module")
def rendering():
    from fastchat_spec.web import rendering

    return rendering


@pytest.fixture(scope="module")
def client():
    from fastchat_spec.web import client

    return client


@pytest.fixture(scope="module")
def handlers():
    from fastchat_spec.web import handlers

    return handlers


@pytest.fixture(scope="module")
def app():
    from fastchat_spec.web import app

    return app


def finished_answer(pieces, accepted, tokenizer=None, seconds=1.0) -> Answer:
    answer = Answer(tokenizer)
    for chunk in simulate(pieces, accepted):
        answer.add(chunk, seconds)
    answer.finish()
    return answer


def test_answer_html_escapes_model_text_and_has_a_legend(rendering):
    answer = finished_answer(["<script>", "alert(1)", "</script>"], [2])  # one step-level chunk
    page = rendering.answer_html(answer)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'class="seg seg-step depth-2"' in page
    page = rendering.answer_html(finished_answer(list(TEXT), ACCEPTED, CharTokenizer()))
    assert "draft depth 3" in page and "base model" in page
    assert 'class="seg seg-token depth-3"' in page


def test_chat_shows_markup_from_the_model_as_text_and_keeps_markdown_and_code(rendering):
    md = rendering.markdown_without_html
    assert md('<script>alert(1)</script> & <img src=x onerror="f()">') == (
        '&lt;script>alert(1)&lt;/script> &amp; &lt;img src=x onerror="f()">')
    assert md("use `a<b` and **bold** <i>") == "use `a<b` and **bold** &lt;i>"  # code spans are literal anyway
    assert md("Code:\n```html\n<b>x</b>\n```\nthen <i>") == "Code:\n```html\n<b>x</b>\n```\nthen &lt;i>"
    assert md("```\n<b>a fence still streaming") == "```\n<b>a fence still streaming"
    assert md("`` a ` <b> ``, ` lone <i>") == "`` a ` <b> ``, ` lone &lt;i>"
    assert rendering.chat_messages([("<b>hi</b>", "<script>x</script>")]) == [
        {"role": "user", "content": "&lt;b>hi&lt;/b>"}, {"role": "assistant", "content": "&lt;script>x&lt;/script>"}]


def test_legend_caps_deep_drafts_at_the_last_colour(rendering):
    answer = finished_answer(list("x" * 25), [12, 10], CharTokenizer())  # Jacobi-like long acceptances
    legend = rendering.legend_html(answer)
    assert f"draft depth {len(rendering.DEPTH_COLOURS) - 1}+" in legend
    assert legend.count('class="swatch"') == len(rendering.DEPTH_COLOURS)


def test_unreachable_controller_is_a_clear_message(client, handlers):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    backend = client.Backend(f"http://127.0.0.1:{port}")
    with pytest.raises(client.WebError, match="Cannot reach the FastChat controller .*fastchat.serve.controller"):
        backend.models()
    refresh_models, *_ = handlers.make_handlers(backend)
    dropdown, error = refresh_models()
    assert dropdown["choices"] == [] and "Cannot reach the FastChat controller" in error
    assert backend.tokenizer("some-model") is None
    assert "--tokenizer some-model=PATH" in backend.tokenizer_notes["some-model"]


def test_tokenizer_option_needs_name_and_path(app):
    assert app.parse_tokenizer_args(["m=/a/b"]) == {"m": "/a/b"}
    with pytest.raises(SystemExit, match="MODEL_NAME=PATH"):
        app.parse_tokenizer_args(["/a/b"])


def test_stats_html_shows_numbers(rendering):
    answer = finished_answer(list(TEXT), ACCEPTED, seconds=2.0)
    page = rendering.stats_html(answer)
    assert 'data-state="done"' in page
    assert f'data-stat="tokens_per_step">{answer.stats.tokens_per_step:.2f}<' in page
    assert 'data-stat="tok_per_s">13.0<' in page


def test_verdict_identical_and_different(rendering):
    spec = finished_answer(list(TEXT), ACCEPTED, seconds=1.0)
    stock = finished_answer(list(TEXT), [0] * 30, seconds=2.5)
    page = rendering.verdict_html(spec, stock, 0.0)
    assert 'data-identical="true"' in page and 'data-speedup="2.5000"' in page
    other = finished_answer(list(TEXT.upper()), [0] * 30, seconds=2.0)
    assert "please report this as a bug" in rendering.verdict_html(spec, other, 0.0)
    assert "expected when sampling" in rendering.verdict_html(spec, other, 0.7)


def test_race_runs_streams_concurrently_or_in_order(client):
    def stream(name, n, fail=False):
        for i in range(n):
            yield {"name": name, "i": i}, 0.0
        if fail:
            raise client.WebError(f"{name} broke")

    items = list(client.race({"a": stream("a", 3), "b": stream("b", 2, fail=True)}, concurrent=False))
    assert [n for n, _ in items] == ["a"] * 4 + ["b"] * 4
    assert isinstance(items[-2][1], client.WebError) and items[-1][1] is None
    items = list(client.race({"a": stream("a", 5), "b": stream("b", 5)}, concurrent=True))
    assert sum(item is None for _, item in items) == 2 and len(items) == 12


class FakeBackend:
    """What the handlers need from ``Backend``, answering from simulated streams."""

    controller = "http://fake"

    def __init__(self, error_chunk=None):
        self.requests = []
        self.tokenizer_notes = {}
        self.error_chunk = error_chunk

    def models(self):
        return ["medusa-vicuna-tiny"]

    def prompt(self, model, turns, message):
        return f"{len(turns)} turns then {message}", None, None

    def tokenizer(self, model):
        return CharTokenizer()

    def stream(self, model, params):
        self.requests.append(params)
        if self.error_chunk:
            yield self.error_chunk, 0.1
            return
        accepted = [0] * 40 if params.get("spec_disable") else ACCEPTED
        for i, chunk in enumerate(simulate(list(TEXT), accepted)):
            yield chunk, 0.01 * (i + 1)


def test_chat_handler_streams_an_answer_with_statistics(handlers):
    backend = FakeBackend()
    _, chat, _, _ = handlers.make_handlers(backend)
    outputs = list(chat("Hi", [], "medusa-vicuna-tiny", 0.0, 1.0, 64))
    messages, turns, _, stats_page, chart, _, error = outputs[-1]
    assert turns == [("Hi", TEXT)] and messages[-1] == {"role": "assistant", "content": TEXT}
    assert 'data-state="done"' in stats_page and error == ""
    assert list(chart["accepted"]) == ACCEPTED
    assert backend.requests[0]["max_new_tokens"] == 64 and "spec_disable" not in backend.requests[0]


def test_chat_handler_rejects_bad_controls_with_the_api_message(handlers):
    backend = FakeBackend()
    _, chat, _, _ = handlers.make_handlers(backend)
    *_, error = list(chat("Hi", [], "medusa-vicuna-tiny", 0.0, 1.0, 0))[-1]
    assert "0 is less than the minimum of 1 - &#x27;max_tokens&#x27;" in error
    *_, error = list(chat("Hi", [], "medusa-vicuna-tiny", 2.5, 1.0, 10))[-1]
    assert "2.5 is greater than the maximum of 2 - &#x27;temperature&#x27;" in error
    assert backend.requests == []


def test_chat_handler_shows_worker_errors(handlers):
    backend = FakeBackend(error_chunk={"text": "bad request (max_new_tokens too large)", "error_code": 50001})
    _, chat, _, _ = handlers.make_handlers(backend)
    messages, turns, *_, error = list(chat("Hi", [], "medusa-vicuna-tiny", 0.0, 1.0, 64))[-1]
    assert turns == [] and "error 50001" in error and "too large" in messages[-1]["content"]


@pytest.mark.parametrize("sequential", [False, True])
def test_side_by_side_handler_compares_spec_and_stock(handlers, sequential):
    backend = FakeBackend()
    *_, side_by_side = handlers.make_handlers(backend)
    *_, verdict, error = list(side_by_side("Hi", "medusa-vicuna-tiny", 0.0, 1.0, 64, sequential))[-1]
    assert 'data-identical="true"' in verdict and error == ""
    assert sorted(bool(p.get("spec_disable")) for p in backend.requests) == [False, True]


# -- launch -------------------------------------------------------------------------------
def test_launch_runs_the_unchanged_fastchat_commands(tmp_path):
    from fastchat_spec.web import launch

    model = str(tmp_path / "medusa-vicuna-tiny")
    os.makedirs(model)
    args = launch.build_parser().parse_args(["--model-path", model + "/", "--port", "7999",
                                             "--worker-args", "--load-8bit --num-gpus 1"])
    name = launch.model_name_for(args.model_path)
    assert name == "medusa-vicuna-tiny"
    cmds = launch.fastchat_commands(args, name, "cpu", python="python")
    assert cmds["controller"] == ["python", "-m", "fastchat.serve.controller", "--host", "127.0.0.1",
                                  "--port", "21001"]
    worker = cmds["model_worker"]
    assert worker[:3] == ["python", "-m", "fastchat.serve.model_worker"]
    assert worker[worker.index("--controller-address") + 1] == "http://127.0.0.1:21001"
    assert worker[-3:] == ["--load-8bit", "--num-gpus", "1"]
    ui = launch.ui_args(args, name)
    assert ui.port == 7999 and ui.tokenizer == [f"medusa-vicuna-tiny={os.path.abspath(model)}"]


def test_launch_refuses_a_busy_port():
    from fastchat_spec.web import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit, match="--port"):
            launch.check_port_free("127.0.0.1", port, "--port")
