"""Real FastChat servers for tests: controller, model worker, OpenAI API server, Gradio.

Every server is the unchanged FastChat command (``python -m fastchat.serve.X``)
run as a subprocess on 127.0.0.1 with a free port. Each one runs in its own
process group with its output in a log file; ``stop`` kills the group, so no
process outlives the test that started it. When a server fails to come up,
the error carries the tail of its log.

Typical use, one stack for a test module, whose logs are printed after a test that failed::

    @pytest.fixture(scope="module")
    def servers(medusa_dir, tmp_path_factory):
        yield from module_servers(tmp_path_factory, medusa_dir, model_name="medusa")

    print_server_logs_on_failure = logs_on_failure("servers")

    def test_chat(servers):
        local_session().post(servers.api_url + "/v1/chat/completions", json=...)

``ManagedProcess`` runs any other server the same way (the Gradio web server).
Fault tests start more workers behind one controller (``num_workers``,
``add_worker``), crash one (``ManagedProcess.kill``), stop one as a service
manager would (``ManagedProcess.terminate``) and restart it (``restart_worker``).
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
import requests

START_TIMEOUT = 180.0  # seconds; a worker loads torch + a model on 2 shared cores


def local_session() -> requests.Session:
    """A requests session for 127.0.0.1 that ignores any HTTP(S)_PROXY in the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


_LOCAL = local_session()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing accepts connections on 127.0.0.1:``port`` and a new server could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT does not count
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def checkout_env() -> dict:
    """This process's environment with the checkout first on PYTHONPATH (what the
    ``subprocess_env`` fixture gives, usable from module-scoped fixtures too)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def server_env(env: dict | None, log_dir: str) -> dict:
    """The caller's env (default: ``checkout_env()``) plus what keeps servers quiet and
    offline; FastChat writes its log files into ``log_dir``."""
    env = dict(env if env is not None else checkout_env())
    env.setdefault("LOGDIR", log_dir)
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("NO_PROXY", "127.0.0.1,localhost")
    env.setdefault("no_proxy", "127.0.0.1,localhost")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ManagedProcess:
    """One subprocess in its own process group, with its output in ``log_dir/name.log``."""

    def __init__(self, name: str, args: Sequence[str], env: dict, log_dir: str):
        os.makedirs(log_dir, exist_ok=True)
        self.name = name
        self.args = list(args)
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args, env=env, cwd=log_dir, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        atexit.register(self.stop)  # a safety net if a fixture's teardown never runs

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (from /proc; Linux)."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "(name)", which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash: no cleanup runs) and reap the leader."""
        if self.proc.returncode is None:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM the leader only, as ``kill PID`` or a service manager does; its exit code,
        or None if it is still running after ``timeout`` seconds (``stop`` then ends it)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log(self, tail: int = 6000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return text[-tail:]

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ``ready`` until it is true; fail with the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} before {what}.\n"
                                   f"command: {' '.join(self.args)}\n--- {self.log_path} ---\n{self.log()}")
            try:
                if ready():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} did not reach '{what}' within {timeout:.0f}s.\n"
                           f"command: {' '.join(self.args)}\n--- {self.log_path} ---\n{self.log()}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left of it. Safe to call twice.

        The leader is left unreaped (a zombie) until the group has been killed, so its
        id, which is the group's id, cannot have been reused by a process we did not start.
        """
        if self._log.closed:
            return
        if self.proc.returncode is None:  # not reaped yet: the group id is still ours
            pid = self.proc.pid
            _signal_group(pid, signal.SIGTERM)
            _wait_exited_unreaped(pid, grace)
            _signal_group(pid, signal.SIGKILL)  # children (Gradio helpers, ...) may outlive the leader
            self.proc.wait()
        self._log.close()


def _wait_exited_unreaped(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for(condition, bound: float, what: str) -> float:
    """Poll ``condition`` until true; seconds it took. Fails after ``bound`` seconds."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > bound:
            pytest.fail(f"not within {bound:.0f}s: {what}")
        time.sleep(0.2)
    return time.monotonic() - t0


def worker_status(worker_url: str, timeout: float = 5.0) -> dict:
    """A worker's /worker_get_status: model_names, speed, queue_length (requests running + waiting)."""
    return _post_json(worker_url + "/worker_get_status", timeout=timeout)


def open_chat_stream(session: requests.Session, api_base: str, model: str, question: str, max_tokens: int,
                     texts: int = 1):
    """A streamed chat completion (temperature 0) read until its ``texts``-th chunk with text, so the
    worker is mid-answer: (the response, its remaining lines, the text so far)."""
    from fastchat_spec.bench.client import chat_payload

    r = session.post(api_base + "/chat/completions", json=chat_payload(model, question, max_tokens, True),
                     stream=True, timeout=(10, 300))
    assert r.status_code == 200, r.text
    lines = r.iter_lines(chunk_size=None)
    text, seen = "", 0
    for line in lines:
        delta = delta_text(line)
        if delta:
            text, seen = text + delta, seen + 1
            if seen == texts:
                return r, lines, text
    pytest.fail(f"the stream of {question!r} ended before its chunk {texts} with text")


def delta_text(line: bytes) -> str:
    """The text a server-sent chat completion line adds ('' for other lines and [DONE])."""
    if not line.startswith(b"data: ") or line == b"data: [DONE]":
        return ""
    return json.loads(line[len(b"data: "):])["choices"][0]["delta"].get("content") or ""


def fastchat_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"fastchat.serve.{module}", *[str(a) for a in args]]


def _post_json(url: str, payload: dict | None = None, timeout: float = 5.0) -> dict:
    r = _LOCAL.post(url, json=payload, timeout=timeout)
    r.raise_for_status()
    return r.json()


@dataclass
class Worker:
    """One model worker: its process, its address and the arguments that restart it."""

    proc: ManagedProcess
    url: str
    port: int
    model_path: str
    env: dict


class FastChatServers:
    """Controller + model worker(s) (+ OpenAI API server) for one model path.

    ``model_name`` defaults to the folder name, as FastChat's worker does.
    ``num_workers`` workers serve it under the same name (FastChat's controller
    dispatches between them). Attributes after ``start``: ``controller_url``,
    ``worker_url`` (the first worker), ``workers``, ``api_url`` (None without
    ``api``), ``model_name``.
    """

    def __init__(self, model_path: str, env: dict | None, log_dir: str, model_name: str | None = None,
                 api: bool = True, limit_worker_concurrency: int = 5, worker_args: Sequence[str] = (),
                 num_workers: int = 1):
        self.model_path = model_path
        self.env = server_env(env, log_dir)
        self.log_dir = log_dir
        self.model_name = model_name or os.path.basename(os.path.normpath(model_path))
        self.with_api = api
        self.limit_worker_concurrency = limit_worker_concurrency
        self.worker_args = list(worker_args)
        self.num_workers = num_workers
        self.processes: list[ManagedProcess] = []
        self.workers: list[Worker] = []
        self._workers_started = 0  # names each worker's log file once
        self.controller_url = self.worker_url = self.api_url = None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> FastChatServers:
        try:
            self._start_controller()
            started = [self.add_worker(wait=False) for _ in range(self.num_workers)]  # they load at once
            for worker in started:
                self.wait_registered(worker)
            self.worker_url = self.workers[0].url
            if self.with_api:
                self._start_api()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def __enter__(self) -> FastChatServers:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path} ---\n{p.log()}" for p in self.processes)

    def print_logs_if_failed(self, request, failures_before: int) -> None:
        """For a function fixture's teardown: show the servers' logs when the test failed
        (written to the real stderr: pytest has captured sys.stderr by then)."""
        if request.session.testsfailed > failures_before:
            sys.__stderr__.write(f"\n==== FastChat server logs for {request.node.nodeid} ====\n{self.logs()}\n")

    def check_alive(self) -> None:
        """Raise with the logs if any server has died (e.g. crashed on a bad request)."""
        dead = [p for p in self.processes if not p.alive()]
        if dead:
            raise AssertionError(f"server(s) died: {[p.name for p in dead]}\n{self.logs()}")

    # -- the three FastChat servers -------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, args, self.env, self.log_dir)
        self.processes.append(proc)
        return proc

    def _start_controller(self) -> None:
        port = free_port()
        self.controller_url = f"http://127.0.0.1:{port}"
        proc = self._spawn("controller", fastchat_module("controller", "--host", "127.0.0.1", "--port", port))
        proc.wait_until(lambda: _LOCAL.get(self.controller_url + "/test_connection", timeout=2).ok,
                        "answering /test_connection")

    def add_worker(self, model_path: str | None = None, extra_env: dict | None = None, port: int | None = None,
                   wait: bool = True) -> Worker:
        """One more worker for ``model_name`` (default: the stack's model path), registered with the
        controller; ``extra_env`` is added to its environment only."""
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        model_path = model_path or self.model_path
        env = {**self.env, **(extra_env or {})}
        args = ["--model-path", model_path, "--device", "cpu", "--host", "127.0.0.1", "--port", port,
                "--worker-address", url, "--controller-address", self.controller_url,
                "--model-names", self.model_name,
                "--limit-worker-concurrency", self.limit_worker_concurrency, *self.worker_args]
        name = "model_worker" if not self._workers_started else f"model_worker_{self._workers_started}"
        self._workers_started += 1
        proc = ManagedProcess(name, fastchat_module("model_worker", *args), env, self.log_dir)
        # workers stay before the API server in ``processes`` (stopped after it, in reverse)
        self.processes.insert(len(self.processes) - (1 if self.api_url else 0), proc)
        worker = Worker(proc, url, port, model_path, env)
        self.workers.append(worker)
        if wait:
            self.wait_registered(worker)
        return worker

    def wait_registered(self, worker: Worker, timeout: float = START_TIMEOUT) -> None:
        # FastChat's worker registers with the controller before its HTTP server starts, so a
        # worker that answers /worker_get_status is registered (also the second one of a model).
        worker.proc.wait_until(lambda: worker_status(worker.url)["model_names"] == [self.model_name]
                               and self.controller_lists_model(),
                               f"model {self.model_name} registered with the controller", timeout)

    def restart_worker(self, worker: Worker) -> Worker:
        """A fresh process on the same address as ``worker`` (which must have exited), as a
        service manager restarts a crashed worker; it replaces ``worker`` in ``workers``."""
        if worker.proc.alive():
            raise RuntimeError(f"{worker.proc.name} (pid {worker.proc.pid}) is still running; kill it first")
        worker.proc.stop()
        index = self.workers.index(worker)
        self.workers.remove(worker)
        fresh = self.add_worker(worker.model_path, worker.env, worker.port, wait=False)
        self.workers.remove(fresh)
        self.workers.insert(index, fresh)
        self.wait_registered(fresh)
        return fresh

    def _start_api(self) -> None:
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        proc = self._spawn("openai_api_server", fastchat_module(
            "openai_api_server", "--host", "127.0.0.1", "--port", port,
            "--controller-address", self.controller_url))
        proc.wait_until(self._api_lists_model, f"model {self.model_name} listed at /v1/models")

    def controller_lists_model(self) -> bool:
        """Whether the controller has a worker for ``model_name`` (without refreshing it:
        the API server's /v1/models makes the controller drop unreachable workers)."""
        return self.model_name in _post_json(self.controller_url + "/list_models")["models"]

    def _api_lists_model(self) -> bool:
        r = _LOCAL.get(self.api_url + "/v1/models", timeout=5)
        return r.ok and self.model_name in [m["id"] for m in r.json()["data"]]

    # -- talking to them ------------------------------------------------------
    def worker_pid(self, index: int = 0) -> int:
        return self.workers[index].proc.pid

    def worker_stream(self, params: dict, timeout: float = 120.0) -> list[dict]:
        """Every JSON chunk the worker's /worker_generate_stream sends for ``params``."""
        import json

        payload = {"model": self.model_name, **params}
        with _LOCAL.post(self.worker_url + "/worker_generate_stream", json=payload, stream=True,
                         timeout=timeout) as r:
            r.raise_for_status()
            return [json.loads(chunk.decode()) for chunk in r.iter_lines(delimiter=b"\0") if chunk]


# --------------------------------------------------------------------------- fixtures of the test modules
def module_servers(tmp_path_factory, model_path: str, env: dict | None = None,
                   **options) -> Iterator[FastChatServers]:
    """The body of a module-scoped fixture (``yield from module_servers(...)``): one started stack for
    ``model_path`` (``env`` and ``options`` as ``FastChatServers`` takes them), stopped after the module."""
    log_dir = str(tmp_path_factory.mktemp("server_logs"))
    with FastChatServers(model_path, env, log_dir, **options) as servers:
        yield servers


def logs_on_failure(servers_fixture: str):
    """An autouse fixture for a test module (``print_server_logs_on_failure = logs_on_failure("servers")``):
    after a failed test that used fixture ``servers_fixture``, the logs of its servers are printed."""

    @pytest.fixture(autouse=True)
    def print_server_logs_on_failure(request):
        if servers_fixture not in request.fixturenames:  # tests without servers do not start them
            yield
            return
        servers = request.getfixturevalue(servers_fixture)
        failures = request.session.testsfailed
        yield
        servers.print_logs_if_failed(request, failures)

    return print_server_logs_on_failure
