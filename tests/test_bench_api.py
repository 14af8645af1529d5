"""The API benchmark measures both models through the real FastChat servers.

Controller, a worker on a Medusa checkpoint (our decoder), a worker on its base
with ``FASTCHAT_SPEC_DISABLE=1`` (FastChat's own) and the OpenAI API server,
as ``scripts/worker_bench.sh`` starts them; then ``fastchat_spec.bench.api``,
one request at a time and then from concurrent clients (``--concurrency``).
"""
from __future__ import annotations

import json
import os

import pytest

from fastchat_spec.bench.api import main as bench_api_main
from tests import tiny
from tests.servers import ManagedProcess, fastchat_module, free_port, local_session, server_env

http = local_session()


@pytest.fixture(scope="module")
def api_url(medusa_dir, base_dir, tmp_path_factory):
    log_dir = str(tmp_path_factory.mktemp("bench_api_logs"))
    env = server_env(None, log_dir)
    processes = []

    def spawn(name, args, extra_env=None):
        proc = ManagedProcess(name, args, {**env, **(extra_env or {})}, log_dir)
        processes.append(proc)
        return proc

    def listed(model):
        return model in http.post(controller + "/list_models", timeout=5).json()["models"]

    try:
        port = free_port()
        controller = f"http://127.0.0.1:{port}"
        spawn("controller", fastchat_module("controller", "--host", "127.0.0.1", "--port", port)).wait_until(
            lambda: http.get(controller + "/test_connection", timeout=2).ok, "answering /test_connection")
        workers = []
        for name, path, extra_env in [("spec", medusa_dir, None), ("stock", base_dir, {"FASTCHAT_SPEC_DISABLE": "1"})]:
            port = free_port()
            workers.append((name, spawn(f"worker_{name}", fastchat_module(
                "model_worker", "--model-path", path, "--model-names", name, "--device", "cpu",
                "--host", "127.0.0.1", "--port", port, "--worker-address", f"http://127.0.0.1:{port}",
                "--controller-address", controller), extra_env)))
        for name, proc in workers:  # both load at once
            proc.wait_until(lambda name=name: listed(name), f"model {name} registered with the controller")
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        spawn("openai_api_server", fastchat_module(
            "openai_api_server", "--host", "127.0.0.1", "--port", port, "--controller-address", controller,
        )).wait_until(lambda: {"spec", "stock"} <= {m["id"] for m in http.get(api + "/v1/models", timeout=5)
                                                        .json()["data"]}, "both models listed at /v1/models")
        yield api
    finally:
        for proc in reversed(processes):
            proc.stop()


def test_bench_api_measures_spec_and_stock_through_the_servers(api_url, tmp_path):
    prompts = os.path.join(tmp_path, "prompts.jsonl")
    with open(prompts, "w", encoding="utf-8") as f:
        for i, category in enumerate(["writing", "code"]):
            f.write(json.dumps({"turns": [" ".join(tiny.corpus(2, seed=i))], "category": category}) + "\n")
    out = os.path.join(tmp_path, "api.json")
    bench_api_main(["--api-base", api_url + "/v1", "--models", "spec,stock", "--prompts", prompts,
                    "--num-prompts", "2", "--max-new-tokens", "16", "--concurrency", "1,2", "--out", out])
    with open(out, encoding="utf-8") as f:
        result = json.load(f)

    assert [r["category"] for r in result["prompts"]] == ["writing", "code"] and not result["skipped"]
    for row in result["prompts"]:
        for model in ("spec", "stock"):
            assert row[model]["tokens"] > 0 and row[model]["text"], (model, row[model])
            assert row[model]["ttft_s"] <= row[model]["stream_seconds"]
            assert row[model]["stream_same_text"]
        assert row["spec"]["text"] == row["stock"]["text"]  # greedy: our decoder's text is FastChat's
    summary = result["summary"]
    assert summary["models"]["spec"]["tok_s"] > 0 and summary["models"]["stock"]["tok_s"] > 0
    assert summary["vs"]["stock"]["same_text_rate"] == 1.0 and summary["vs"]["stock"]["speedup"] > 0
    assert result["command"].startswith("python -m fastchat_spec.bench.api --api-base")
    assert result["device"] and result["date"]

    # Under concurrency: both models, each level, every answer its one-at-a-time answer.
    assert [level["concurrency"] for level in result["concurrency"]] == [1, 2]
    for level in result["concurrency"]:
        for model in ("spec", "stock"):
            s = level["models"][model]
            assert s["ok"] == s["requests"] == level["requests"] >= 4, s["errors"]
            assert s["failed"] == s["empty"] == s["garbled"] == s["mismatched"] == 0, s["requests_detail"]
            assert s["tok_s"] > 0 and s["latency_s"]["p50"] > 0
        assert level["tok_s_ratio"]["stock"] > 0
