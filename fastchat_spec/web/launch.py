"""One command for the whole demo: FastChat controller + model worker + the web UI.

    python -m fastchat_spec.web.launch [--model-path PATH] [--device cpu|cuda] [--port 7860]

The controller and the worker are the unchanged FastChat commands
(``python -m fastchat.serve.controller`` / ``model_worker``), run as child
processes on 127.0.0.1 with their output in a log folder; the UI runs in this
process, on 127.0.0.1 unless ``--host`` says otherwise.

Ctrl-C, SIGTERM or SIGHUP, at any moment, stops everything within seconds,
answers in flight included: each server's process group gets SIGTERM, the UI
closes meanwhile, and a group still there after ``STOP_GRACE_S`` is killed.
Each stop is logged. If the launcher itself is killed, the kernel kills its
servers (``die_with_parent``).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Optional

import requests

import fastchat_spec
from fastchat_spec.web.app import build_parser as ui_parser
from fastchat_spec.web.app import close_ui, serving_until_stopped, start_ui, ui_url
from fastchat_spec.web.stopping import exit_after

INTERNAL_HOST = "127.0.0.1"  # the controller and the worker never listen beyond this machine
STOP_GRACE_S = 5.0  # after SIGTERM, then SIGKILL
FORCE_AFTER_S = 1.0  # after SIGTERM, a server still waiting for an answer in flight gets SIGINT (force quit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastchat_spec.web.launch",
        description="Start a FastChat controller, a FastChat model worker for one (speculative) model, and the "
                    "fastchat-spec web UI; print the URL; stop everything on Ctrl-C.")
    parser.add_argument("--model-path", default=fastchat_spec.default_model_path(),
                        help="model folder or Hugging Face id for the worker (default: the bundled %(default)s)")
    parser.add_argument("--device", choices=["cuda", "cpu", "mps", "xpu", "npu"], default=None,
                        help="where the worker runs the model (default: cuda if available, else cpu)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface the web UI listens on; 0.0.0.0 exposes it to the network "
                             "(default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="web UI port (default: %(default)s)")
    parser.add_argument("--controller-port", type=int, default=21001, help="controller port (default: %(default)s)")
    parser.add_argument("--worker-port", type=int, default=21002, help="model worker port (default: %(default)s)")
    parser.add_argument("--model-name", default=None,
                        help="name the worker registers (default: the model folder's name)")
    parser.add_argument("--worker-args", default="",
                        help="extra model_worker options, quoted as one string, e.g. \"--load-8bit --num-gpus 2\"")
    parser.add_argument("--log-dir", default=None,
                        help="folder for the controller's and worker's logs (default: a new temporary folder)")
    parser.add_argument("--startup-timeout", type=float, default=900.0,
                        help="seconds to wait for the worker to load the model (default: %(default)s)")
    return parser


def model_name_for(model_path: str) -> str:
    """The name FastChat's worker registers by default: the last path component."""
    return os.path.basename(os.path.normpath(model_path))


def fastchat_commands(args, model_name: str, device: str, python: str = sys.executable) -> dict:
    """The two FastChat commands, exactly as a user would type them."""
    controller = f"http://{INTERNAL_HOST}:{args.controller_port}"
    worker = f"http://{INTERNAL_HOST}:{args.worker_port}"
    return {
        "controller": [python, "-m", "fastchat.serve.controller", "--host", INTERNAL_HOST,
                       "--port", str(args.controller_port)],
        "model_worker": [python, "-m", "fastchat.serve.model_worker", "--model-path", args.model_path,
                         "--device", device, "--host", INTERNAL_HOST, "--port", str(args.worker_port),
                         "--worker-address", worker, "--controller-address", controller,
                         "--model-names", model_name, *shlex.split(args.worker_args)],
    }


def ui_args(args, model_name: str) -> argparse.Namespace:
    argv = ["--controller-address", f"http://{INTERNAL_HOST}:{args.controller_port}",
            "--host", args.host, "--port", str(args.port)]
    if os.path.isdir(args.model_path):
        argv += ["--tokenizer", f"{model_name}={os.path.abspath(args.model_path)}"]
    return ui_parser().parse_args(argv)


def check_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            raise SystemExit(f"port {port} on {host} is already in use (another FastChat server or UI?): "
                             f"stop it or pass {flag} with a free port") from None


class Child:
    """A FastChat server in its own process group, its output in ``log_dir/name.log``.

    The group holds the server and anything it starts, so one signal reaches
    all of them. The leader is reaped only after the group has been killed:
    until then its pid, which is the group's id, cannot be reused by a process
    we did not start.
    """

    def __init__(self, name: str, argv: list, env: dict, log_dir: str):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=log_dir, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent(os.getpid()))
        self.terminated_at: Optional[float] = None
        self.exited_at: Optional[float] = None
        self.forced = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.exit_status() is None

    def exit_status(self) -> Optional[int]:
        """The leader's exit code (negative: the signal that ended it), or None while it runs; never reaps it."""
        if self.proc.returncode is not None:
            return self.proc.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere: nothing left to wait for
            return self.proc.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def tail(self, chars: int = 3000) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-chars:]

    def terminate(self) -> None:
        """Ask the whole group to stop (FastChat's uvicorn servers shut down on SIGTERM)."""
        if self.terminated_at is None and not self.has_exited():
            self.terminated_at = time.monotonic()
            _signal_group(self.pid, signal.SIGTERM)

    def force(self) -> None:
        """uvicorn's force quit (what a second Ctrl-C does): stop waiting for answers still streaming."""
        if not self.forced:
            self.forced = True
            _signal_group(self.pid, signal.SIGINT)

    def has_exited(self) -> bool:
        """Whether the leader has exited; records when that was first seen."""
        if self.exited_at is None and self.exit_status() is not None:
            self.exited_at = time.monotonic()
        return self.exited_at is not None

    def finish(self) -> str:
        """Kill what is left of the group (the server if it hung, anything it started), reap it; how it ended."""
        self.has_exited()  # records when, if it has
        status = self.exit_status()
        if self.proc.returncode is None:
            _signal_group(self.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()
        if self.terminated_at is None:
            return f"had already stopped (exit code {status})"
        if status is None:
            return f"did not exit within {time.monotonic() - self.terminated_at:.0f} s of SIGTERM: killed"
        how = f"exit code {status}" if status >= 0 else signal.Signals(-status).name
        forced = " and SIGINT" if self.forced else ""
        return f"exited ({how}) {self.exited_at - self.terminated_at:.1f} s after SIGTERM{forced}"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the whole group is gone already
        pass


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> Optional[Callable[[], None]]:
    """For ``preexec_fn``: the kernel kills the child if the launcher dies without cleaning up (SIGKILL,
    a crash), so even then no server is left running. Linux only; elsewhere the clean-up in ``main`` is all."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)

    return set_death_signal


def stop_everything(ui, children: list, log: Callable[[str], None], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every server group at once and close the UI meanwhile; then kill what is left, and log each."""
    for child in children:
        child.terminate()
    closing = threading.Thread(target=close_ui, args=(ui,), name="close-ui", daemon=True)
    closing.start()
    start = time.monotonic()
    running = list(children)
    while running and time.monotonic() < start + grace:
        running = [child for child in running if not child.has_exited()]
        if time.monotonic() >= start + FORCE_AFTER_S:
            for child in running:
                child.force()
        time.sleep(0.05)
    closing.join(max(0.0, start + grace - time.monotonic()))
    if ui is not None:
        log("fastchat-spec: closed the web UI" if not closing.is_alive() else
            f"fastchat-spec: the web UI did not close within {grace:.0f} s; exiting anyway")
    for child in reversed(children):
        log(f"fastchat-spec: {child.name} (pid {child.pid}) {child.finish()}; its log: {child.log_path}")


def wait_until(ready: Callable[[], bool], child: Child, what: str, timeout: float) -> None:
    """Poll ``ready`` with a progress line; exit with the child's log if it dies or time runs out."""
    from tqdm import tqdm

    start = time.monotonic()
    with tqdm(desc=what, bar_format="{desc}: {elapsed}", leave=True) as bar:
        while time.monotonic() - start < timeout:
            if not child.alive():
                bar.close()
                raise SystemExit(f"{child.name} stopped (exit code {child.exit_status()}) before {what}. "
                                 f"Its log, {child.log_path}, ends with:\n{child.tail()}")
            try:
                if ready():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
            bar.update()
    raise SystemExit(f"{child.name} did not finish '{what}' within {timeout:.0f}s; see {child.log_path} "
                     "or raise --startup-timeout")


def warm_up(worker_url: str) -> Optional[str]:
    """One short greedy request, so that the first answer in the UI is not the slow first call."""
    payload = {"prompt": "Hello", "temperature": 0.0, "max_new_tokens": 8, "echo": False}
    try:
        with requests.post(worker_url + "/worker_generate_stream", json=payload, stream=True, timeout=300) as r:
            chunks = [c for c in r.iter_lines(delimiter=b"\0") if c]
    except requests.RequestException as e:
        return f"warm-up request failed ({e})"
    import json

    last = json.loads(chunks[-1]) if chunks else {}
    return None if last.get("error_code", 0) == 0 else f"warm-up answered error: {last.get('text')}"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.model_path == fastchat_spec.default_model_path() and not os.path.isdir(args.model_path):
        raise SystemExit(f"the bundled model {args.model_path} is missing; pass --model-path with a model folder "
                         "or Hugging Face id, or reinstall fastchat-spec")
    for host, port, flag in ((INTERNAL_HOST, args.controller_port, "--controller-port"),
                             (INTERNAL_HOST, args.worker_port, "--worker-port"), (args.host, args.port, "--port")):
        check_port_free(host, port, flag)
    device = args.device or default_device()
    name = args.model_name or model_name_for(args.model_path)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="fastchat-spec-")
    os.makedirs(log_dir, exist_ok=True)
    env = dict(os.environ, LOGDIR=log_dir, PYTHONUNBUFFERED="1")
    commands = fastchat_commands(args, name, device)
    controller_url = f"http://{INTERNAL_HOST}:{args.controller_port}"
    worker_url = f"http://{INTERNAL_HOST}:{args.worker_port}"
    log(f"fastchat-spec: logs in {log_dir}")

    children: list[Child] = []
    ui = None
    try:
        # Signals are caught before the first child starts: a stop at any moment stops what was started.
        with serving_until_stopped(lambda signal_name: log(
                f"fastchat-spec: {signal_name} received: stopping the web UI, the model worker and the controller")):
            children.append(Child("controller", commands["controller"], env, log_dir))
            wait_until(lambda: requests.get(controller_url + "/test_connection", timeout=2).ok, children[-1],
                       f"controller starting on {controller_url}", 120)
            children.append(Child("model_worker", commands["model_worker"], env, log_dir))
            wait_until(lambda: name in requests.post(controller_url + "/list_models", timeout=2).json()["models"],
                       children[-1], f"model worker loading {name} on {device}", args.startup_timeout)
            problem = warm_up(worker_url)
            if problem:
                log(f"warning: {problem}; see {children[-1].log_path}")
            ui_options = ui_args(args, name)
            ui = start_ui(ui_options)
            log(f"\nfastchat-spec is ready: open {ui_url(ui_options)} in a browser (Ctrl-C stops everything)\n")
    finally:
        stop_everything(ui, children, log)
        log("fastchat-spec: stopped the web UI, the model worker and the controller")


def log(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    exit_after(main)
