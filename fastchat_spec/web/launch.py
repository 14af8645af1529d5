"""One command for the whole demo: FastChat controller + model worker + the web UI.

    python -m fastchat_spec.web.launch [--model-path PATH] [--device cpu|cuda] [--port 7860]

The controller and the worker are the unchanged FastChat commands
(``python -m fastchat.serve.controller`` / ``model_worker``), run as child
processes on 127.0.0.1 with their output in a log folder; the UI runs in this
process. Ctrl-C (or SIGTERM) stops the UI and then the children.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

import requests

import fastchat_spec

INTERNAL_HOST = "127.0.0.1"  # the controller and the worker never listen beyond this machine


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
    from fastchat_spec.web.app import build_parser as ui_parser

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
    """A FastChat server in its own process group, its output in ``log_dir/name.log``."""

    def __init__(self, name: str, argv: list, env: dict, log_dir: str):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=log_dir, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-chars:]

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def wait_until(ready: Callable[[], bool], child: Child, what: str, timeout: float) -> None:
    """Poll ``ready`` with a progress line; exit with the child's log if it dies or time runs out."""
    from tqdm import tqdm

    start = time.monotonic()
    with tqdm(desc=what, bar_format="{desc}: {elapsed}", leave=True) as bar:
        while time.monotonic() - start < timeout:
            if not child.alive():
                bar.close()
                raise SystemExit(f"{child.name} stopped (exit code {child.proc.returncode}) before {what}. "
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
    print(f"fastchat-spec: logs in {log_dir}", flush=True)

    children: list[Child] = []
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        children.append(Child("controller", commands["controller"], env, log_dir))
        wait_until(lambda: requests.get(controller_url + "/test_connection", timeout=2).ok, children[-1],
                   f"controller starting on {controller_url}", 120)
        children.append(Child("model_worker", commands["model_worker"], env, log_dir))
        wait_until(lambda: name in requests.post(controller_url + "/list_models", timeout=2).json()["models"],
                   children[-1], f"model worker loading {name} on {device}", args.startup_timeout)
        problem = warm_up(worker_url)
        if problem:
            print(f"warning: {problem}; see {children[-1].log_path}", flush=True)
        from fastchat_spec.web.app import serve

        serve(ui_args(args, name), on_ready=_announce)
    except KeyboardInterrupt:
        pass
    finally:
        for child in reversed(children):
            child.stop()
        print("fastchat-spec: stopped the web UI, the model worker and the controller", flush=True)


def _announce(url: str) -> None:
    print(f"\nfastchat-spec is ready: open {url} in a browser (Ctrl-C stops everything)\n", flush=True)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
