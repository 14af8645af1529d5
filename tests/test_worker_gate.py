"""Issue #18: no request keeps one of the model worker's concurrency slots.

FastChat 0.2.36 takes a slot (``--limit-worker-concurrency``, default 5) for
each generate request and gives it back in a BackgroundTask that only runs
when the stream ends cleanly: a request that raises keeps its slot, and after
five bodies like ``[]`` the worker answers nothing ever again.

First, in this process, the hook's endpoints on FastChat's worker app with a
stand-in worker: every way a response can end (an exception mid-stream, a
client that goes away, a cancelled request). Then real workers
(``python -m fastchat.serve.model_worker --no-register``): a plain model
through the hook, which must keep serving after twice its limit of malformed
requests, and FastChat as shipped (``FASTCHAT_SPEC_DISABLE=1``), which wedges.
"""
from __future__ import annotations

import asyncio
import json
import threading

import fastchat.serve.base_model_worker as bmw
import pytest
import requests
from fastchat.serve.base_model_worker import BaseModelWorker

from tests.servers import ManagedProcess, checkout_env, fastchat_module, free_port, local_session, server_env

LIMIT = 5  # FastChat's default --limit-worker-concurrency
http = local_session()

# Bodies that are no FastChat request, of every kind, as raw bytes.
MALFORMED = [
    b"[]",
    b"{}",
    b'"just a string"',
    b"null",
    b'{"prompt": ',                                            # invalid JSON
    b'{"prompt": "\xff\xfe"}',                                 # invalid UTF-8
    b'{"prompt": 5}',                                          # wrong type
    b'{"prompt": "Hello", "temperature": "hot"}',              # wrong type, past the body check
    b'{"prompt": "Hello", "stop_token_ids": "2"}',             # FastChat's decoder raises AttributeError
    b'{"prompt": "Hello", "max_new_tokens": 0}',               # FastChat's decoder raises UnboundLocalError
]


def queue_length(worker_url: str) -> int:
    return http.post(worker_url + "/worker_get_status", timeout=10).json()["queue_length"]


def send_raw(worker_url: str, path: str, body: bytes, timeout: float = 120) -> requests.Response:
    """POST ``body`` as is; the whole answer is read (a stream that breaks off counts as answered)."""
    try:
        return http.post(worker_url + path, data=body, headers={"Content-Type": "application/json"},
                         timeout=timeout)
    except requests.exceptions.ChunkedEncodingError as e:  # FastChat's stream dies mid-body on an exception
        return e.response


def flood_with_malformed(worker_url: str, limit: int) -> list:
    """2 x limit malformed requests over both generate endpoints; their answers."""
    answers = []
    for i in range(2 * limit):
        body = MALFORMED[i % len(MALFORMED)]
        for path in ("/worker_generate_stream", "/worker_generate"):
            r = send_raw(worker_url, path, body)
            answers.append((body, path, None if r is None else r.status_code, None if r is None else r.content))
    return answers


def wait_until_idle(proc: ManagedProcess, worker_url: str) -> None:
    """The slot comes back just after the last byte is sent, so a client may ask a moment before."""
    proc.wait_until(lambda: queue_length(worker_url) == 0, "no request holding a slot", timeout=60)


def worker_chunks(content: bytes) -> list[dict]:
    return [json.loads(c) for c in content.split(b"\0") if c]


def normal_request(worker_url: str, model_name: str, timeout: float = 120) -> dict:
    body = json.dumps({"model": model_name, "prompt": "Hello world", "temperature": 0, "max_new_tokens": 8,
                       "echo": False}).encode()
    r = send_raw(worker_url, "/worker_generate_stream", body, timeout=timeout)
    assert r.status_code == 200, r.text
    return worker_chunks(r.content)[-1]


# -- in this process: the endpoints with a stand-in worker ------------------------------------


class StandInWorker:
    """What the worker app's endpoints use of FastChat's worker; ``gate`` is the stream to serve."""

    get_queue_length = BaseModelWorker.get_queue_length

    def __init__(self, gate=None, limit: int = 2):
        self.gate = gate
        self.limit_worker_concurrency = limit
        self.semaphore = None
        self.closed = threading.Event()

    def generate_stream_gate(self, params):
        return self.gate(self, params)

    def generate_gate(self, params):
        return {"text": "".join(c.decode() for c in self.gate(self, params)), "error_code": 0}

    def get_embeddings(self, params):
        raise KeyError("embedding model missing")  # what a body FastChat does not expect causes

    def count_token(self, params):
        return {"count": len(params["prompt"]), "error_code": 0}


def chunks_then(error: BaseException | None = None, n: int = 3, hold: threading.Event | None = None):
    """A gate yielding ``n`` chunks, then raising ``error``; ``hold`` pauses it after the first chunk."""
    def gate(worker, params):
        try:
            for i in range(n):
                yield f"chunk {i}\0".encode()
                if hold is not None:
                    hold.wait(30)
            if error is not None:
                raise error
        finally:
            worker.closed.set()
    return gate


class Client:
    """Drives the worker ASGI app like a server would, one request at a time."""

    def __init__(self, spec_version: str = "2.3"):
        self.spec_version = spec_version
        self.sent: list[dict] = []
        self.first_body = asyncio.Event()
        self.gone = asyncio.Event()  # the client hangs up

    async def post(self, path: str, body: bytes):
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": self.spec_version},
                 "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
                 "raw_path": path.encode(), "root_path": "", "query_string": b"",
                 "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if self.gone.is_set() and self.spec_version >= "2.4":
                raise OSError("client gone")  # what a 2.4 server does on a closed connection
            self.sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                self.first_body.set()

        await bmw.app(scope, receive, send)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


@pytest.fixture
def stand_in(monkeypatch):
    def install(gate=None, limit: int = 2) -> StandInWorker:
        worker = StandInWorker(gate, limit)
        monkeypatch.setattr(bmw, "worker", worker)
        return worker
    return install


def test_the_hook_replaced_the_worker_endpoints():
    paths = {getattr(r, "path", None): r.endpoint for r in bmw.app.router.routes}
    for path, name in [("/worker_generate_stream", "api_generate_stream"), ("/worker_generate", "api_generate"),
                       ("/worker_get_embeddings", "api_get_embeddings"), ("/count_token", "api_count_token")]:
        assert paths[path] is getattr(bmw, name)
        assert paths[path].__module__ == "fastchat_spec.worker_gate"


def test_a_stream_that_raises_midway_gives_its_slot_back(stand_in):
    worker = stand_in(chunks_then(TypeError("list indices must be integers")))

    async def run():
        client = Client()
        with pytest.raises(TypeError):  # Starlette re-raises after the response broke off
            await client.post("/worker_generate_stream", b'{"prompt": "hi"}')
        return client

    client = asyncio.run(run())
    assert client.status == 200 and client.body.startswith(b"chunk 0")
    assert worker.get_queue_length() == 0


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_client_that_hangs_up_gives_its_slot_back_and_stops_the_stream(stand_in, spec_version):
    hold = threading.Event()
    worker = stand_in(chunks_then(n=1000, hold=hold))

    async def run():
        client = Client(spec_version)
        task = asyncio.create_task(client.post("/worker_generate_stream", b'{"prompt": "hi"}'))
        await asyncio.wait_for(client.first_body.wait(), 30)
        assert worker.get_queue_length() == 1
        client.gone.set()
        hold.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)

    asyncio.run(run())
    assert worker.get_queue_length() == 0
    assert worker.closed.is_set()  # the generator was closed, not left to the garbage collector


def test_a_cancelled_request_gives_its_slot_back(stand_in):
    hold = threading.Event()
    worker = stand_in(chunks_then(n=1000, hold=hold))

    async def run():
        client = Client()
        task = asyncio.create_task(client.post("/worker_generate_stream", b'{"prompt": "hi"}'))
        await asyncio.wait_for(client.first_body.wait(), 30)
        task.cancel()
        hold.set()  # the chunk in flight finishes in its thread; then the cancellation lands
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)

    asyncio.run(run())
    assert worker.get_queue_length() == 0 and worker.closed.is_set()


def test_a_request_queued_behind_the_limit_and_cancelled_takes_no_slot(stand_in):
    hold = threading.Event()
    worker = stand_in(chunks_then(n=2, hold=hold), limit=1)

    async def run():
        first, queued = Client(), Client()
        running = asyncio.create_task(first.post("/worker_generate_stream", b'{"prompt": "hi"}'))
        await asyncio.wait_for(first.first_body.wait(), 30)
        waiting = asyncio.create_task(queued.post("/worker_generate_stream", b'{"prompt": "hi"}'))
        await asyncio.sleep(0.2)
        assert worker.get_queue_length() == 2  # one running, one waiting
        waiting.cancel()
        hold.set()
        await asyncio.wait_for(asyncio.gather(running, waiting, return_exceptions=True), 30)

    asyncio.run(run())
    assert worker.get_queue_length() == 0


def test_generate_and_embeddings_that_raise_give_their_slot_back(stand_in):
    worker = stand_in(chunks_then(RuntimeError("device lost")))

    async def run():
        for path in ("/worker_generate", "/worker_get_embeddings"):
            with pytest.raises((RuntimeError, KeyError)):
                await Client().post(path, b'{"prompt": "hi", "input": ["hi"]}')

    asyncio.run(run())
    assert worker.get_queue_length() == 0


@pytest.mark.parametrize("path,body,reason", [
    ("/worker_generate_stream", b"[]", "a generate request is a JSON object with a 'prompt' string, got an array"),
    ("/worker_generate_stream", b"{}", "prompt must be a string, got null"),
    ("/worker_generate_stream", b'{"prompt": ["a"]}', "prompt must be a string, got an array"),
    ("/worker_generate_stream", b'{"prompt": ', "the request body is not valid JSON"),
    ("/worker_generate_stream", b'{"prompt": "\xff"}', "not UTF-8 (byte 0xff at offset 12)"),
    ("/worker_generate_stream", b"[" * 100_000, "nested too deeply"),
    ("/worker_generate_stream", b'{"prompt": "\\ud83d"}', "prompt is not valid Unicode: lone surrogate"),
    ("/worker_generate", b"[]", "a generate request is a JSON object"),
    ("/worker_get_embeddings", b'{"input": []}', "input must be a string or a non-empty list of strings"),
    ("/worker_get_embeddings", b'{"input": ["a", 5]}', "input[1] must be a string"),
    ("/count_token", b"{}", "prompt must be a string"),
])
def test_a_body_that_is_no_request_gets_400_and_takes_no_slot(stand_in, path, body, reason):
    worker = stand_in(chunks_then())

    async def run():
        client = Client()
        await client.post(path, body)
        return client

    client = asyncio.run(run())
    assert client.status == 400
    assert reason in json.loads(client.body)["detail"]
    assert worker.semaphore is None  # never even created: no slot was taken


def test_brackets_inside_a_prompt_are_text_not_nesting(stand_in):
    """Bodies nested deeper than 64 arrays are refused before json.loads recurses into them; brackets
    inside strings (a prompt about code, an escaped quote before them) are text and do not count."""
    stand_in(chunks_then())
    prompt = '\\" ' + "[" * 1000 + "{" * 1000

    async def run():
        client = Client()
        await client.post("/worker_generate_stream", json.dumps({"prompt": prompt, "stop": ["]]", "}}"]}).encode())
        return client

    client = asyncio.run(run())
    assert client.status == 200 and client.body.startswith(b"chunk 0")


# -- real workers: a plain model through the hook, and FastChat as shipped -------------------


def start_worker(name: str, model_path: str, env: dict, log_dir: str) -> tuple[ManagedProcess, str]:
    """``python -m fastchat.serve.model_worker --no-register`` (no controller needed); its URL."""
    url = f"http://127.0.0.1:{free_port()}"
    args = ["--model-path", model_path, "--device", "cpu", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
            "--worker-address", url, "--no-register", "--limit-worker-concurrency", LIMIT]
    proc = ManagedProcess(name, fastchat_module("model_worker", *args), server_env(env, log_dir), log_dir)
    try:
        proc.wait_until(lambda: http.post(url + "/worker_get_status", timeout=2).ok, "answering /worker_get_status")
    except BaseException:
        proc.stop()
        raise
    return proc, url


@pytest.fixture(scope="module")
def plain_worker(base_dir, tmp_path_factory):
    """A model without heads: FastChat's own generate_stream, behind the hook's endpoints."""
    proc, url = start_worker("plain_worker", base_dir, checkout_env(), str(tmp_path_factory.mktemp("gate_logs")))
    yield proc, url
    proc.stop()


@pytest.fixture(scope="module")
def stock_worker(base_dir, tmp_path_factory):
    env = dict(checkout_env(), FASTCHAT_SPEC_DISABLE="1")
    proc, url = start_worker("stock_worker", base_dir, env, str(tmp_path_factory.mktemp("stock_logs")))
    yield proc, url
    proc.stop()


def test_twice_the_limit_of_malformed_requests_leave_the_worker_serving(plain_worker, base_dir):
    proc, url = plain_worker
    answers = flood_with_malformed(url, LIMIT)
    for body, path, status, content in answers:
        assert status in (200, 400), (body, path, status, content)
        if status == 400:
            assert json.loads(content)["detail"], (body, path)  # a reason
        else:  # FastChat's own decoder refused inside the stream: an error chunk with the reason
            last = worker_chunks(content)[-1] if path.endswith("stream") else json.loads(content)
            assert last["error_code"] != 0 and last["text"], (body, path, last)
    wait_until_idle(proc, url)
    out = normal_request(url, "vicuna-tiny")
    assert out["error_code"] == 0 and out["finish_reason"] in ("stop", "length") and out["text"]
    wait_until_idle(proc, url)
    assert proc.alive()


def test_a_client_that_hangs_up_mid_stream_gives_its_slot_back(plain_worker):
    proc, url = plain_worker
    body = {"prompt": "Hello world", "temperature": 0, "max_new_tokens": 900, "echo": False}
    with http.post(url + "/worker_generate_stream", json=body, stream=True, timeout=120) as r:
        next(r.iter_lines(delimiter=b"\0"))  # one chunk, then hang up
        assert queue_length(url) == 1
    wait_until_idle(proc, url)
    assert normal_request(url, "vicuna-tiny")["error_code"] == 0


def test_stock_fastchat_is_wedged_by_limit_malformed_bodies(stock_worker):
    """Documents the FastChat 0.2.36 bug the hook fixes: ``[]`` x limit and the worker never answers again."""
    proc, url = stock_worker
    for _ in range(LIMIT):
        send_raw(url, "/worker_generate_stream", b"[]")  # TypeError inside the stream; the slot stays taken
    assert queue_length(url) == LIMIT
    with pytest.raises(requests.exceptions.ReadTimeout):  # waits for a slot that never comes back
        normal_request(url, "vicuna-tiny", timeout=10)
    assert queue_length(url) == LIMIT + 1  # the request above still waits inside the worker
    assert proc.alive()
