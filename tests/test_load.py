"""Concurrent chat requests through FastChat's unchanged servers all come back right.

One stack for the module: ``python -m fastchat.serve.controller``, one
``model_worker`` on the bundled Medusa model (our generate_stream) and the
``openai_api_server``, as subprocesses on 127.0.0.1. The load tool
(``python -m fastchat_spec.bench.load``) first asks every (prompt, max_tokens)
one at a time, streamed and not, then sends the same 48 requests twice from 8
client threads: the first level warms the worker up, the second is the one the
memory check reads.
"""
from __future__ import annotations

import json
import os

import pytest

import fastchat_spec
from fastchat_spec.bench import load
from tests.servers import logs_on_failure, module_servers

MODEL = "medusa-nano"
CLIENTS = 8
REQUESTS = 48
# Growth of the worker's RSS allowed between the end of the warm-up level and the end of
# the measured one. Every concurrent request holds its own KV cache (about 30 MiB each at
# 8 clients on this model, measured) and the allocator keeps pages it has freed, so the
# warm-up at the same concurrency already reaches the plateau; a leak of per-request state
# (caches, tensors kept by unfinished streams) would add about 30 MiB for each of the 48
# requests, far above this bound, while allocator noise stays well below it.
RSS_GROWTH_MB = 200


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    yield from module_servers(tmp_path_factory, fastchat_spec.default_model_path(), model_name=MODEL,
                              limit_worker_concurrency=CLIENTS)


print_server_logs_on_failure = logs_on_failure("servers")


@pytest.fixture(scope="module")
def result(servers, tmp_path_factory):
    """The command-line tool's JSON for two levels of 8 clients (held-out ShareGPT prompts of
    21 to 1,555 characters, max_tokens 12 or 32, about half of the requests streamed)."""
    out = os.path.join(tmp_path_factory.mktemp("load"), "load.json")
    load.main(["--api-base", servers.api_url + "/v1", "--model", MODEL, "--num-requests", str(REQUESTS),
               "--concurrency", f"{CLIENTS},{CLIENTS}", "--num-prompts", "6", "--max-tokens", "12,32",
               "--worker-pid", str(servers.worker_pid()), "--worker-url", servers.worker_url,
               "--timeout", "300", "--out", out])
    servers.check_alive()
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def test_every_concurrent_request_gets_its_sequential_answer(result):
    assert result["reference"]["keys"] == 12 and not result["reference"]["skipped"]
    for level in result["levels"]:
        assert level["requests"] == level["ok"] == REQUESTS, level["errors"]
        problems = [r for r in level["requests_detail"] if r["problems"]]
        assert level["failed"] == level["empty"] == level["garbled"] == level["mismatched"] == 0, problems
        assert 0 < level["streamed"] < REQUESTS  # both modes ran concurrently
        assert level["tokens_unknown"] == 0 and level["tok_s"] > 0
        assert 0 < level["latency_s"]["p50"] <= level["latency_s"]["p90"] <= level["latency_s"]["p99"]
    assert load.clean(result)


def test_streamed_answers_equal_the_non_streamed_ones(result):
    assert result["reference"]["stream_differs"] == []
    for answer in result["reference"]["answers"]:
        assert answer["text"] and answer["stream_text"] == answer["text"].replace("\ufffd", ""), answer


def test_worker_memory_levels_off_after_a_warm_up(result):
    warm, measured = (level["rss"] for level in result["levels"])
    assert warm and measured, "no RSS samples: --worker-pid was not read"
    assert measured["end_mb"] <= warm["end_mb"] + RSS_GROWTH_MB, (warm, measured)


def test_each_level_says_what_the_engine_loop_did(result):
    """Rows shared per batched step and how busy the worker's loop was: where a level's time went."""
    for level in result["levels"]:
        engine = level["engine"]
        assert engine["steps"] > 0 and 1 <= engine["rows_per_step"] <= CLIENTS
        assert engine["ms_per_step"] > 0 and 0 < engine["busy_fraction"] <= 1.0
        assert engine["tree_nodes_per_row"] >= 1 and engine["tokens_per_row_step"] >= 1.0  # at least the bonus
    assert result["levels"][0]["engine"]["prefill_s"] > 0


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--api-base", "--concurrency", "--num-requests", "--max-tokens", "--stream-fraction",
                   "--worker-pid", "--worker-url", "--out"):
        assert option in text
