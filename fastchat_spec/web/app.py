"""``python -m fastchat_spec.web``: a Gradio chat UI for FastChat workers that shows what speculative decoding buys.

* Chat: streaming answers, live tok/s, tokens per verification step (τ), a
  chart of the draft tokens each step accepted, and the answer shaded by the
  draft depth that proposed each token (see ``stats`` for how text is matched
  to tokens).
* Side by side: one prompt through speculative decoding and through the same
  worker's stock autoregressive decoder (``"spec_disable": true``), streamed
  together, with the speedup and whether the two texts are identical.

The UI is an ordinary FastChat client (``client``); ``rendering`` turns
answers into HTML, ``handlers`` are what the buttons do, ``layout`` is the
page. This module is the command line and the server's life: it listens on
127.0.0.1 unless ``--host`` says otherwise, and Ctrl-C or SIGTERM closes it
at once, open streams included (``stopping``).
"""
from __future__ import annotations

import argparse
import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import gradio as gr

from fastchat_spec.web.client import Backend
from fastchat_spec.web.layout import build_demo
from fastchat_spec.web.stopping import StopRequested, ignore_stop_signals, stop_on_signals, wait_for_stop

CLOSE_GRACE_S = 1  # seconds an open stream gets when the UI closes (uvicorn takes whole seconds)


def parse_tokenizer_args(values: list) -> dict:
    out = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--tokenizer {value!r}: write it as MODEL_NAME=PATH, e.g. "
                             "--tokenizer medusa-vicuna-nano=/path/to/medusa-vicuna-nano")
        out[name] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastchat_spec.web",
        description="Chat UI for FastChat workers that shows the speed of speculative decoding: tok/s, tokens "
                    "per step, accepted drafts per step, token provenance, and a side-by-side comparison "
                    "with stock decoding. Needs a running FastChat controller and model worker (or use "
                    "`python -m fastchat_spec.web.launch`, which starts all three).")
    parser.add_argument("--controller-address", default="http://127.0.0.1:21001",
                        help="URL of the FastChat controller (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to serve on; 0.0.0.0 exposes the UI to the network (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default: %(default)s)")
    parser.add_argument("--tokenizer", action="append", default=[], metavar="MODEL_NAME=PATH",
                        help="where a model's checkpoint lives on this machine, so that the UI can load its "
                             "tokenizer (token-level shading) and its conversation template; repeatable. "
                             "Without it, shading is per streamed chunk.")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="answers the UI streams at once across all users (default: %(default)s)")
    return parser


def start_ui(args) -> gr.Blocks:
    """Build the page and start serving it in a background thread; returns once it listens."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_demo(Backend(args.controller_address, parse_tokenizer_args(args.tokenizer)))
    demo.queue(default_concurrency_limit=args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, show_api=False, ssr_mode=False,
                prevent_thread_lock=True, quiet=False)
    return demo


def ui_url(args) -> str:
    return f"http://{args.host}:{args.port}"


def close_ui(demo: Optional[gr.Blocks]) -> None:
    """Stop serving, giving responses still open (answers streaming, a browser's event stream)
    ``CLOSE_GRACE_S`` to end before they are cancelled.

    uvicorn's graceful shutdown would otherwise wait for every open response,
    and a connected browser keeps one open for as long as its tab lives. The
    cancellations are what was asked for, so uvicorn's traceback for each of
    them is not printed.
    """
    if demo is None:
        return
    if demo.server is not None:
        demo.server.config.timeout_graceful_shutdown = CLOSE_GRACE_S
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    demo.close(verbose=False)


@contextmanager
def serving_until_stopped(on_stop: Callable[[str], None]) -> Iterator[None]:
    """The with-block starts what is served; leaving it blocks until Ctrl-C, SIGTERM or SIGHUP.

    A stop that arrives while the block still runs (a slow start) ends it the
    same way, without a traceback. ``on_stop`` gets the signal's name. After
    the block, further stop signals are only noted, so that the caller's
    clean-up cannot be cut short halfway and leave servers running.
    """
    stop_on_signals()
    try:
        yield
        wait_for_stop()
    except StopRequested as stop:
        on_stop(stop.signal_name)
    finally:
        ignore_stop_signals()


def serve(args, log: Callable[[str], None] = print) -> None:
    """Serve the UI until Ctrl-C, SIGTERM or SIGHUP."""
    demo = None
    try:
        with serving_until_stopped(lambda signal_name: log(f"fastchat-spec web UI: {signal_name} received, closing")):
            demo = start_ui(args)
            log(f"fastchat-spec web UI: open {ui_url(args)} in a browser (Ctrl-C stops it)")
    finally:
        close_ui(demo)
        if demo is not None:
            log("fastchat-spec web UI: stopped")


def main(argv=None) -> None:
    serve(build_parser().parse_args(argv), log=lambda line: print(line, flush=True))
