"""End to end in a real headless Chromium: launch -> controller + worker + UI -> chat and side by side.

``python -m fastchat_spec.web.launch`` starts the unchanged FastChat controller
and model worker (subprocesses on 127.0.0.1) for a tiny Medusa checkpoint whose
heads copy the base's lm_head, so drafts are often accepted. Playwright drives
Debian's ``/usr/bin/chromium`` (``.ci/install_browser.sh`` installs both; no
``playwright install``). Screenshots go to ``artifacts/`` at the repo root.
At the end, Ctrl-C (SIGINT) must stop the launcher and every process it started.

A model cannot honestly be made to write ``<script>``, so the last test
registers a stand-in worker (``MarkupWorker``, FastChat's worker protocol in a
few lines) whose answer is markup, and checks that the page shows it as text.

Skipped only when Chromium or Playwright is missing and ``CI`` is not set.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
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
STOP_TIMEOUT = 120  # generous: the launcher itself stops everything within seconds


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
    started = []
    try:
        _wait_ready(proc, log_path, url)
        started = psutil.Process(proc.pid).children(recursive=True)  # the controller and the worker
        yield {"url": url, "controller": f"http://127.0.0.1:{ports['--controller-port']}", "proc": proc,
               "started": started}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()  # the kernel then kills its servers too (launch.die_with_parent)
            proc.wait()
    log_text = log_path.read_text(errors="replace")
    assert proc.returncode == 0, log_text[-3000:]
    assert "stopped the web UI, the model worker and the controller" in log_text
    assert len(started) >= 2, f"the launcher's servers were not found: {started}"
    assert not still_running(started, STOP_TIMEOUT), "a server outlived the launcher's Ctrl-C"
    for flag in ("--controller-port", "--worker-port", "--port"):
        assert not listening(ports[flag]), f"{flag} {ports[flag]} still listening after Ctrl-C"


def still_running(procs: list, timeout: float) -> list:
    """Those of ``procs`` still running (zombies have exited) after up to ``timeout`` seconds."""
    def running(p):
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while [p for p in procs if running(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in procs if running(p)]


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
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=90_000)  # as generous as every other wait here: 2 busy cores
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(ui["url"])
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
    # Shaded by draft depth: token by token (depth 1, 2, 3), or, for a chunk that gathers several steps
    # whose text does not split back into its tokens, by the chunk's deepest accepted draft.
    assert page.locator('#chat-provenance .seg[class*=" depth-"]:not(.depth-0)').count() > 0
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


# -- model output is text, never markup ------------------------------------------------------
MARKUP_MODEL = "stub-markup-worker"
MARKUP = ('Sure: <script>alert("script ran")</script><img src="/no-such-image.png" '
          'onerror="alert(\'img ran\')"><b>not bold</b> & <i>not italic</i> done.')


class MarkupWorker:
    """A stand-in FastChat model worker whose every answer is ``MARKUP``, streamed in three chunks.

    It speaks the worker protocol the UI uses (``/worker_get_status``,
    ``/worker_generate_stream`` with \\0-delimited JSON and ``spec`` statistics)
    and registers with the launcher's controller without heartbeats.
    """

    def __init__(self, controller_url: str):
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        session = requests.Session()
        session.trust_env = False
        session.post(controller_url + "/register_worker", timeout=30, json={
            "worker_name": self.url, "check_heart_beat": False, "worker_status": self.status()}).raise_for_status()

    @staticmethod
    def status() -> dict:
        return {"model_names": [MARKUP_MODEL], "speed": 1, "queue_length": 0}

    @staticmethod
    def chunks() -> list:
        cuts = [len(MARKUP) // 3, 2 * len(MARKUP) // 3, len(MARKUP)]
        return [{"text": MARKUP[:cut], "error_code": 0, "finish_reason": "stop" if i == 2 else None,
                 "usage": {"prompt_tokens": 5, "completion_tokens": 4 * (i + 1), "total_tokens": 9 + 4 * i},
                 "spec": {"steps": 2 * (i + 1), "tokens": 4 * (i + 1), "accepted": [1] * (2 * i + 1)}}
                for i, cut in enumerate(cuts)]

    def _handler(self):
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/worker_get_status":
                    body = json.dumps(worker.status()).encode()
                elif self.path == "/worker_generate_stream":
                    body = b"".join(json.dumps(c).encode() + b"\0" for c in worker.chunks())
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet: the test reports what matters
                pass

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_model_output_with_markup_is_shown_as_text_and_never_runs(page, ui):
    from playwright.sync_api import expect

    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    worker = MarkupWorker(ui["controller"])
    try:
        page.reload()  # a fresh page lists the models the controller has now, stub included
        expect(page.locator("#model-select input")).to_have_value(MODEL_NAME)  # the list has loaded
        page.click("#model-select input")
        page.click(f'[role="option"]:has-text("{MARKUP_MODEL}")')
        expect(page.locator("#model-select input")).to_have_value(MARKUP_MODEL)
        page.fill("#chat-input textarea", "Answer with some HTML.")
        page.click("#chat-send")
        page.wait_for_selector('#chat-stats .spec-stats[data-state="done"]')
        shaded = page.locator('#chat-provenance .answer-text[data-state="done"]')
        expect(shaded).to_have_text(MARKUP)  # every character as the worker sent it
        bubble = page.locator('#chatbot [data-testid="bot"]').last
        expect(bubble).to_contain_text('<script>alert("script ran")</script>')
        expect(bubble).to_contain_text("<b>not bold</b> & <i>not italic</i>")
        for panel in ("#chat-provenance", "#chatbot"):
            assert page.locator(f"{panel} script, {panel} img, {panel} b, {panel} i").count() == 0, (
                f"markup from the model became elements in {panel}")
        screenshot(page, "web_markup_as_text.png")

        page.click("#tab-sbs-button")
        page.fill("#sbs-input textarea", "Answer with some HTML.")
        page.click("#sbs-run")
        page.locator('#sbs-verdict .verdict[data-state="done"]').wait_for()
        for panel in ("#sbs-spec-text", "#sbs-stock-text"):
            expect(page.locator(f"{panel} .answer-text")).to_have_text(MARKUP)
            assert page.locator(f"{panel} script, {panel} img").count() == 0
        assert dialogs == [], f"model output ran as script in the page: {dialogs}"
    finally:
        worker.stop()


def test_ctrl_c_while_the_page_streams_stops_the_launcher_and_its_servers(page, ui):
    """Last: the launch fixture's teardown then checks the exit code, the log and the ports."""
    from playwright.sync_api import expect

    page.reload()  # back to the tiny model (the stub worker is gone)
    expect(page.locator("#model-select input")).to_have_value(MODEL_NAME)
    page.click("#tab-sbs-button")
    page.fill("#max-new-tokens input", "900")
    page.fill("#sbs-input textarea", "Tell me a long story about the house and the tree.")
    page.click("#sbs-run")
    page.locator('#sbs-verdict .verdict[data-state="streaming"]').wait_for()
    page.locator('#sbs-spec-text .answer-text[data-state="streaming"]').wait_for()
    ui["proc"].send_signal(signal.SIGINT)
    ui["proc"].wait(STOP_TIMEOUT)
    assert ui["proc"].returncode == 0
    assert not still_running(ui["started"], STOP_TIMEOUT), "a server outlived the launcher's Ctrl-C"
