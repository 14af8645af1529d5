"""FastChat's CLI and Gradio web server, unchanged, on a Medusa checkpoint.

* ``python -m fastchat.serve.cli --model-path <ckpt> --device cpu --temperature 0``
  with a piped question answers with the base model's greedy text (its
  ``--debug`` line carries the exact prompt, template and answer).
* ``python -m fastchat.serve.gradio_web_server`` starts against a controller
  with our worker registered and serves its page listing the model.
* The Gradio server picks conversation templates from the worker's *name*
  only: ``medusa-vicuna-tiny`` must give Vicuna's.
"""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from fastchat.model.model_adapter import get_conversation_template, load_model
from fastchat.serve.inference import generate_stream as fastchat_generate_stream

from tests.conftest import ROOT
from tests.servers import (
    FastChatServers,
    ManagedProcess,
    fastchat_module,
    free_port,
    local_session,
    server_env,
)

MODEL = "medusa-vicuna-tiny"
MAX_NEW_TOKENS = 32


def run_cli(ckpt: str, stdin: str, env: dict, cwd: str) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        fastchat_module("cli", "--model-path", ckpt, "--device", "cpu", "--temperature", "0",
                        "--max-new-tokens", MAX_NEW_TOKENS, "--debug"),
        input=stdin.encode(), env=env, cwd=cwd, capture_output=True, timeout=300, check=False)


def debug_records(stdout: str) -> list[dict]:
    """The CLI's ``--debug`` lines: {'conv_template', 'prompt', 'outputs', 'speed (token/s)'}."""
    return [ast.literal_eval(line) for line in stdout.splitlines() if line.startswith("{'conv_template'")]


def stock_answer(base_dir: str, ckpt: str, question: str) -> tuple[str, str]:
    """What FastChat's CLI would print for the base model: same template, same parameters."""
    conv = get_conversation_template(ckpt)
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    model, tok = load_model(base_dir, device="cpu")
    params = {"prompt": prompt, "temperature": 0.0, "repetition_penalty": 1.0, "max_new_tokens": MAX_NEW_TOKENS,
              "stop": conv.stop_str, "stop_token_ids": conv.stop_token_ids, "echo": False}
    text = list(fastchat_generate_stream(model, tok, params, "cpu", 1024))[-1]["text"]
    return prompt, text.strip()


@pytest.mark.parametrize("ending", ["", "!!exit\n"], ids=["eof", "exit-command"])
def test_cli_answers_with_the_base_models_greedy_text(medusa_dir, base_dir, subprocess_env, tmp_path, ending):
    question = "Why is the river fast?"
    proc = run_cli(medusa_dir, f"{question}\n{ending}", subprocess_env, str(tmp_path))
    stdout, stderr = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, stderr[-4000:]
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr[-4000:]
    records = debug_records(stdout)
    assert len(records) == 1, stdout[-3000:]
    prompt, expected = stock_answer(base_dir, medusa_dir, question)
    assert records[0]["conv_template"] == "vicuna_v1.1"
    assert records[0]["prompt"] == prompt
    assert records[0]["outputs"] == expected
    assert f"ASSISTANT: {expected}" in stdout  # what the user sees on the terminal
    assert stdout.rstrip().endswith("exit...")


def test_cli_survives_a_conversation_longer_than_the_context(medusa_dir, subprocess_env, tmp_path):
    """FastChat's CLI sends the whole history; past the context its decoder keeps the prompt's end, and so
    does ours, so the chat goes on instead of ending in a traceback."""
    long_question = "the cat runs over the house " * 250  # ~1.5k tokens, the context is 1024
    proc = run_cli(medusa_dir, long_question + "\n", subprocess_env, str(tmp_path))
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
    assert len(debug_records(proc.stdout.decode("utf-8", "replace"))) == 1


def test_conversation_template_from_the_model_name_alone(subprocess_env):
    """Like the Gradio server, which only knows the worker's name: no folder to look into."""
    code = ("from fastchat.model.model_adapter import get_conversation_template, get_model_adapter;"
            f"print(get_conversation_template({MODEL!r}).name, type(get_model_adapter({MODEL!r})).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split() == ["vicuna_v1.1", "MedusaAdapter"]


@pytest.fixture(scope="module")
def gradio_server(medusa_dir, tmp_path_factory):
    log_dir = str(tmp_path_factory.mktemp("gradio_logs"))
    with FastChatServers(medusa_dir, None, log_dir, model_name=MODEL, api=False) as stack:
        port = free_port()
        web = ManagedProcess("gradio_web_server", fastchat_module(
            "gradio_web_server", "--controller-url", stack.controller_url, "--host", "127.0.0.1", "--port", port),
            server_env(None, log_dir), log_dir)
        url = f"http://127.0.0.1:{port}"
        try:
            http = local_session()
            web.wait_until(lambda: http.get(url + "/", timeout=5).status_code == 200, f"serving {url}/")
            yield url, web, stack
        finally:
            web.stop()


def test_gradio_web_server_serves_its_page_with_our_model(gradio_server):
    url, web, stack = gradio_server
    http = local_session()
    page = http.get(url + "/", timeout=30)
    assert page.status_code == 200
    assert "gradio" in page.text.lower()
    config = http.get(url + "/config", timeout=30)
    assert config.status_code == 200 and MODEL in config.text, "the model dropdown lists our worker"
    log = web.log(20000)
    assert f"All models: ['{MODEL}']" in log
    assert "Traceback" not in log, log
    stack.check_alive()
