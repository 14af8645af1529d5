"""End to end in a real headless Chromium: launch -> controller + worker + UI -> chat and side by side.

``python -m fastchat_spec.web.launch`` starts the unchanged FastChat controller
and model worker (subprocesses on 127.0.0.1) for a tiny Medusa checkpoint whose
heads copy the base's lm_head, so drafts are often accepted. Playwright drives
Debian's ``/usr/bin/chromium`` (``.ci/install_browser.sh`` installs both; no
``playwright install``). Screenshots go to ``artifacts/`` at the repo root.

Skipped only when Chromium or Playwright is missing and ``CI`` is not set.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = os.path.join(ROOT, "artifacts")
MODEL_NAME = "medusa-vicuna-tiny"
PROMPT = "Tell me about the house and the tree."
MAX_NEW_TOKENS = "48"
START_TIMEOUT = 150  # seconds for launch to print its URL on 2 busy cores


def _missing() -> str:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium, or run .ci/install_browser.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install playwright, or run .ci/install_browser.sh)"
    return ""


if _missing() and not os.environ.get("CI"):
    pytest.skip(f"browser test skipped: {_missing()}", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def ui(tmp_path_factory, base_dir):
    """The whole stack started by the launch command; stopped with SIGINT (Ctrl-C) at the end."""
    from fastchat_spec.adapters.medusa import write_medusa_checkpoint
    from fastchat_spec.generate.tree import chain
    from tests import tiny

    work = tmp_path_factory.mktemp("web")
    ckpt = str(work / MODEL_NAME)
    write_medusa_checkpoint(ckpt, tiny.oracle_medusa_heads(base_dir, 3), base_dir, tree=chain(3).to_list())
    ports = {"--port": free_port(), "--controller-port": free_port(), "--worker-port": free_port()}
    argv = [sys.executable, "-m", "fastchat_spec.web.launch", "--model-path", ckpt, "--device", "cpu",
            "--log-dir", str(work / "logs")]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    log_path = work / "launch.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=str(work), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{ports['--port']}"
    try:
        _wait_ready(proc, log_path, url)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log_text = log_path.read_text(errors="replace")
    assert proc.returncode == 0, log_text[-3000:]
    assert "stopped the web UI, the model worker and the controller" in log_text
    for flag in ("--controller-port", "--worker-port", "--port"):
        assert not listening(ports[flag]), f"{flag} {ports[flag]} still listening after Ctrl-C"


def _wait_ready(proc, log_path, url) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"launch exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
        if "is ready" in log_path.read_text(errors="replace"):
            requests.get(url, timeout=10).raise_for_status()
            return
        time.sleep(0.5)
    pytest.fail(f"launch did not become ready in {START_TIMEOUT}s:\n{log_path.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="module")
def page(ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(ui)
        yield page
        browser.close()


def screenshot(page, name: str) -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")
    return path


def stat(page, panel: str, key: str) -> float:
    text = page.inner_text(f'{panel} [data-stat="{key}"]').strip()
    assert re.fullmatch(r"\d+(\.\d+)?", text), (
        f"{panel} {key} shows {text!r}, not a number"
        + (" (the worker sent no `spec` statistics: is the import hook active in the model worker?)"
           if text == "–" else ""))
    return float(text)


def test_chat_streams_an_answer_with_live_statistics(page):
    from playwright.sync_api import expect

    expect(page.locator("#model-select input")).to_have_value(MODEL_NAME)
    page.fill("#max-new-tokens input", MAX_NEW_TOKENS)
    page.fill("#chat-input textarea", PROMPT)
    page.click("#chat-send")
    page.wait_for_selector('#chat-stats .spec-stats[data-state="done"]')
    assert stat(page, "#chat-stats", "tok_per_s") > 0
    assert stat(page, "#chat-stats", "tokens_per_step") > 1.0  # the oracle heads get drafts accepted
    assert stat(page, "#chat-stats", "tokens") == int(MAX_NEW_TOKENS)
    assert stat(page, "#chat-stats", "steps") > 1
    assert page.inner_text('#chatbot [data-testid="bot"]').strip()
    assert page.locator("#chat-provenance .seg").count() > 0
    assert page.locator("#chat-provenance .seg.depth-1").count() > 0  # shaded by draft depth
    expect(page.locator("#chat-provenance .legend")).to_contain_text("draft depth 1")
    assert page.locator("#chat-chart canvas, #chat-chart svg").count() > 0
    screenshot(page, "web_chat.png")


def test_bad_controls_and_worker_errors_are_shown(page):
    page.fill("#max-new-tokens input", "0")
    page.fill("#chat-input textarea", PROMPT)
    page.click("#chat-send")
    error = page.locator("#chat-error .spec-error")
    error.wait_for()
    assert "0 is less than the minimum of 1 - 'max_tokens'" in error.inner_text()
    page.fill("#max-new-tokens input", "5000")  # more than the tiny model's 1024-token context
    page.fill("#chat-input textarea", PROMPT)
    page.click("#chat-send")
    page.wait_for_selector("#chat-error .spec-error:has-text('model worker reported error')")
    assert "context" in page.inner_text("#chat-error")
    page.fill("#max-new-tokens input", MAX_NEW_TOKENS)


def test_side_by_side_gives_identical_greedy_texts_and_a_speedup(page):
    page.click("#tab-sbs-button")
    page.fill("#sbs-input textarea", PROMPT)
    page.click("#sbs-run")
    verdict = page.locator('#sbs-verdict .verdict[data-state="done"]')
    verdict.wait_for()
    spec_text = page.locator("#sbs-spec-text .answer-text").text_content()
    stock_text = page.locator("#sbs-stock-text .answer-text").text_content()
    assert spec_text and spec_text == stock_text
    assert verdict.get_attribute("data-identical") == "true"
    assert float(verdict.get_attribute("data-speedup")) > 0
    assert "identical" in verdict.inner_text()
    assert stat(page, "#sbs-spec-stats", "tokens_per_step") > 1.0
    assert stat(page, "#sbs-stock-stats", "tokens_per_step") == 1.0
    screenshot(page, "web_side_by_side.png")
