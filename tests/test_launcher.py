"""The launcher, the web UI and scripts/demo.sh: what they listen on, and that Ctrl-C stops all of it.

Issue #16: ``python -m fastchat_spec.web.launch`` ignored a SIGINT sent while
it served (a process started in the background by a non-interactive shell, as
CI scripts start it, inherits SIGINT as ignored), and the test that then
killed it left the controller and the worker running. Issue #14: no listener
may bind beyond the host the user asked for (127.0.0.1 by default).

Each stack is the real launcher on a tiny Medusa checkpoint; a stop signal is
sent while a worker answer is streaming, and the test then checks, by pid and
by process group, that every process the launcher started is gone. Waits
have generous bounds; nothing here asserts timing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_NAME = "medusa-vicuna-tiny"
START_TIMEOUT = 240  # seconds for the launcher to print its URL on 2 busy cores
STOP_TIMEOUT = 120  # generous: the launcher's own bound is a few seconds
READY_LINE = "fastchat-spec is ready"


# -- helpers (small copies of tests/servers.py's, which another test module owns) ---------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # 127.0.0.1 only, whatever HTTP(S)_PROXY says
    return session


def launcher_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


def listening_addresses(procs) -> set:
    """(ip, port) of every TCP socket in LISTEN and every unconnected UDP socket of ``procs``."""
    found = set()
    for proc in procs:
        try:
            connections = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in connections:
            if (c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN) or (
                    c.type == socket.SOCK_DGRAM and not c.raddr):
                found.add((c.laddr.ip, c.laddr.port))
    return found


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Command:
    """A command started the way a terminal starts it: in a session and process group of its own.

    ``tree`` is the command and every process it started, found through
    parent links (the launcher's servers sit in groups of their own). On any
    failure, ``kill_tree`` leaves nothing behind.
    """

    def __init__(self, argv: list, log_path: str, sigint_ignored: bool = False):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # As `cmd &` in a non-interactive shell (CI) starts it: SIGINT ignored, inherited through exec.
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
        self.proc = subprocess.Popen(argv, env=launcher_env(), cwd=os.path.dirname(log_path), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=preexec)
        self.seen: dict[int, psutil.Process] = {}
        self.groups: set[int] = set()

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for_line(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"{self.proc.args} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.5)
        pytest.fail(f"no {text!r} within {timeout}s:\n{self.log()[-4000:]}")

    def tree(self) -> list[psutil.Process]:
        """The command and its descendants now; each one and its process group are remembered."""
        root = psutil.Process(self.proc.pid)
        procs = [root] + root.children(recursive=True)
        for p in procs:
            self.seen[p.pid] = p
            try:
                self.groups.add(os.getpgid(p.pid))
            except ProcessLookupError:
                pass
        self.groups.discard(os.getpgid(0))  # never this test's own group
        return procs

    def leftovers(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        """What is still running, after up to ``timeout``, of every process and group seen in the tree."""
        left = [f"pid {p.pid}: {_cmdline(p)}" for p in still_running(list(self.seen.values()), timeout)]
        left += [f"process group {g}: {members}" for g in sorted(self.groups) if (members := group_members(g))]
        return left

    def kill_tree(self) -> None:
        if self.proc.poll() is None:
            self.tree()
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in still_running(list(self.seen.values()), 0):
            p.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


def running(p: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent's bookkeeping is left)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE  # is_running also rules out pid reuse
    except psutil.NoSuchProcess:
        return False


def still_running(procs: list, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def group_members(pgid: int) -> list[int]:
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and running(p):
                members.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:200]
    except psutil.Error:
        return "?"


class WorkerStream:
    """A long greedy answer streamed from the worker in a thread: the generation in flight at the stop."""

    def __init__(self, worker_url: str):
        self.first_chunk = threading.Event()
        self.chunks: list[dict] = []
        self.ended_by: str = ""
        payload = {"model": MODEL_NAME, "prompt": "Tell me a long story about the house and the tree.",
                   "temperature": 0.0, "max_new_tokens": 900, "echo": False}
        self.thread = threading.Thread(target=self._read, args=(worker_url, payload), daemon=True)
        self.thread.start()

    def _read(self, worker_url: str, payload: dict) -> None:
        try:
            with local_session().post(worker_url + "/worker_generate_stream", json=payload, stream=True,
                                      timeout=STOP_TIMEOUT) as r:
                for raw in r.iter_lines(delimiter=b"\0"):
                    if raw:
                        self.chunks.append(json.loads(raw))
                        self.first_chunk.set()
            self.ended_by = "the end of the answer"
        except (requests.RequestException, ValueError) as e:
            self.ended_by = type(e).__name__
        finally:
            self.first_chunk.set()

    def still_streaming(self) -> bool:
        return self.thread.is_alive() and bool(self.chunks) and not self.chunks[-1].get("finish_reason")


# -- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, base_dir):
    """Oracle Medusa heads on the tiny Llama (as in the browser test)."""
    from fastchat_spec.adapters.medusa import write_medusa_checkpoint
    from fastchat_spec.generate.tree import chain
    from tests import tiny

    out = str(tmp_path_factory.mktemp("launcher") / MODEL_NAME)
    write_medusa_checkpoint(out, tiny.oracle_medusa_heads(base_dir, 3), base_dir, tree=chain(3).to_list())
    return out


def stack_ports() -> dict:
    return {"--port": free_port(), "--controller-port": free_port(), "--worker-port": free_port()}


def stack_args(ckpt: str, ports: dict, log_dir) -> list:
    args = ["--model-path", ckpt, "--device", "cpu", "--log-dir", str(log_dir)]
    for flag, port in ports.items():
        args += [flag, str(port)]
    return args  # no --host: the default is what is checked


@pytest.fixture(scope="module")
def launched(ckpt, tmp_path_factory):
    """``python -m fastchat_spec.web.launch`` started as CI starts it (SIGINT inherited as ignored)."""
    work = tmp_path_factory.mktemp("launched")
    ports = stack_ports()
    command = Command([sys.executable, "-m", "fastchat_spec.web.launch", *stack_args(ckpt, ports, work / "logs")],
                      str(work / "launch.log"), sigint_ignored=True)
    try:
        command.wait_for_line(READY_LINE)
        command.tree()
        yield command, ports
    finally:
        command.kill_tree()


def stop_mid_answer(command: Command, ports: dict, send_stop) -> WorkerStream:
    """Start a long answer, send the stop while it streams, and wait (generously) for the command to exit."""
    servers = command.tree()
    assert len(servers) >= 3, f"expected the launcher, a controller, a worker: {[_cmdline(p) for p in servers]}"
    stream = WorkerStream(f"http://127.0.0.1:{ports['--worker-port']}")
    assert stream.first_chunk.wait(STOP_TIMEOUT) and stream.chunks, f"no answer streamed ({stream.ended_by})"
    assert stream.still_streaming(), "the answer ended before the stop could be sent mid-answer"
    send_stop()
    try:
        command.proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_TIMEOUT}s after the stop signal:\n{command.log()[-4000:]}")
    return stream


def assert_everything_stopped(command: Command, ports: dict, signal_name: str) -> None:
    log = command.log()
    assert command.proc.returncode == 0, log[-4000:]
    left = command.leftovers()
    assert not left, f"left running: {left}\n{log[-4000:]}"
    assert f"{signal_name} received" in log, log[-4000:]
    for server in ("model_worker", "controller"):
        assert f"fastchat-spec: {server} (pid " in log, f"the stop of the {server} is not logged:\n{log[-4000:]}"
    assert "fastchat-spec: closed the web UI" in log
    assert "stopped the web UI, the model worker and the controller" in log
    for flag, port in ports.items():
        assert not port_open(port), f"{flag} {port} still listening after the stop"


# -- the launcher ----------------------------------------------------------------------
def test_launcher_listens_only_on_127_0_0_1_by_default(launched):
    command, ports = launched
    assert listening_addresses(command.tree()) == {("127.0.0.1", port) for port in ports.values()}


def test_ctrl_c_mid_answer_stops_the_launcher_and_every_server(launched):
    command, ports = launched
    stream = stop_mid_answer(command, ports, lambda: command.proc.send_signal(signal.SIGINT))
    assert_everything_stopped(command, ports, "SIGINT")
    stream.thread.join(STOP_TIMEOUT)
    assert not stream.chunks[-1].get("finish_reason"), "the answer finished: the stop did not come mid-answer"


# -- scripts/demo.sh (the README's main command) -------------------------------------------
@pytest.fixture
def demo_script(tmp_path):
    """scripts/demo.sh as it is, in a copy of the layout it expects, with setup.sh stubbed: this
    checkout's .venv is set up already, and reinstalling into it is not this test's business."""
    scripts = tmp_path / "repo" / "scripts"
    scripts.mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "scripts", "demo.sh"), scripts / "demo.sh")
    (scripts / "setup.sh").write_text("#!/usr/bin/env bash\n# stub: the test's .venv is ready\n")
    os.symlink(sys.prefix, tmp_path / "repo" / ".venv")
    if not os.path.exists(tmp_path / "repo" / ".venv" / "bin" / "activate"):
        pytest.skip(f"the tests do not run in a virtual environment ({sys.prefix}); demo.sh sources .venv")
    return str(scripts / "demo.sh")


def test_demo_script_listens_on_127_0_0_1_and_stops_on_ctrl_c(demo_script, ckpt, tmp_path):
    ports = stack_ports()
    command = Command(["bash", demo_script, *stack_args(ckpt, ports, tmp_path / "logs")], str(tmp_path / "demo.log"))
    try:
        command.wait_for_line(READY_LINE)
        assert listening_addresses(command.tree()) == {("127.0.0.1", port) for port in ports.values()}
        # Ctrl-C in a terminal: SIGINT to the foreground process group, i.e. to the script's group.
        stop_mid_answer(command, ports, lambda: os.killpg(command.proc.pid, signal.SIGINT))
        assert_everything_stopped(command, ports, "SIGINT")
    finally:
        command.kill_tree()


# -- the web UI on its own -------------------------------------------------------------------
def test_web_ui_listens_on_127_0_0_1_and_stops_on_sigterm(tmp_path):
    port, nowhere = free_port(), free_port()  # no controller: the page still serves
    command = Command([sys.executable, "-m", "fastchat_spec.web", "--port", str(port),
                       "--controller-address", f"http://127.0.0.1:{nowhere}"], str(tmp_path / "web.log"))
    try:
        command.wait_for_line(f"open http://127.0.0.1:{port}")
        local_session().get(f"http://127.0.0.1:{port}", timeout=30).raise_for_status()
        assert listening_addresses(command.tree()) == {("127.0.0.1", port)}
        command.proc.send_signal(signal.SIGTERM)
        command.proc.wait(STOP_TIMEOUT)
        assert command.proc.returncode == 0, command.log()[-3000:]
        assert "SIGTERM received" in command.log() and "web UI: stopped" in command.log()
        assert not port_open(port)
    finally:
        command.kill_tree()


# -- the launcher's process handling without a model ------------------------------------------
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a server that hangs on shutdown
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_server_that_ignores_sigterm_is_killed_with_what_it_started(tmp_path):
    from fastchat_spec.web.launch import Child, stop_everything

    child = Child("stubborn", [sys.executable, "-c", STUBBORN], launcher_env(), str(tmp_path))
    lines = []
    try:
        deadline = time.monotonic() + STOP_TIMEOUT
        while not child.tail().strip() and time.monotonic() < deadline:
            time.sleep(0.2)
        grandchild = psutil.Process(int(child.tail().split()[0]))
    finally:
        stop_everything(None, [child], lines.append, grace=1.0)
    assert "stubborn" in lines[0] and "killed" in lines[0], lines
    assert not child.alive()
    assert not still_running([grandchild], STOP_TIMEOUT), "the server's own child outlived it"


KILLED_LAUNCHER = """
import os, sys, time
from fastchat_spec.web.launch import Child
child = Child("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], dict(os.environ), sys.argv[1])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_servers_die_with_a_launcher_that_is_killed(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-c", KILLED_LAUNCHER, str(tmp_path)], env=launcher_env(),
                                stdout=subprocess.PIPE, text=True)
    servers = []
    try:
        servers.append(psutil.Process(int(launcher.stdout.readline())))
        launcher.kill()  # no clean-up can run: only the kernel can stop the server now
        launcher.wait()
        assert not still_running(servers, STOP_TIMEOUT), "the server outlived its killed launcher"
    finally:
        launcher.kill()
        launcher.wait()
        for server in still_running(servers, 0):
            server.kill()
