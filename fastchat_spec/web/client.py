"""The web UI's side of FastChat's HTTP protocol: controller look-ups and worker streams.

It talks to an unchanged FastChat controller and model worker exactly as
FastChat's own Gradio server does (``/list_models``, ``/get_worker_address``,
``/worker_generate_stream`` with \\0-delimited JSON) and builds prompts with
FastChat's conversation templates. Nothing here knows about Gradio or HTML.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from functools import lru_cache
from typing import Iterator, Optional

import requests

HEADERS = {"User-Agent": "fastchat-spec web UI"}


class WebError(Exception):
    """Something a user must fix or wait for; the message says what."""


class Backend:
    """The controller, the workers behind it, and what the UI knows locally about each model."""

    def __init__(self, controller: str, tokenizer_paths: Optional[dict] = None, timeout: Optional[float] = None):
        from fastchat.constants import WORKER_API_TIMEOUT

        self.controller = controller.rstrip("/")
        self.tokenizer_paths = dict(tokenizer_paths or {})
        self.timeout = timeout or WORKER_API_TIMEOUT
        self.tokenizer_notes: dict[str, str] = {}

    def _post(self, path: str, payload: Optional[dict] = None) -> dict:
        url = self.controller + path
        try:
            response = requests.post(url, json=payload, headers=HEADERS, timeout=10)
            response.raise_for_status()
            return response.json()
        except requests.RequestException as e:
            raise WebError(
                f"Cannot reach the FastChat controller at {self.controller} ({type(e).__name__}). Start it with "
                "`python -m fastchat.serve.controller`, or start everything with "
                "`python -m fastchat_spec.web.launch`, or pass the right --controller-address.") from None

    def models(self) -> list[str]:
        self._post("/refresh_all_workers")
        return sorted(self._post("/list_models")["models"])

    def worker_address(self, model: str) -> str:
        address = self._post("/get_worker_address", {"model": model}).get("address", "")
        if not address:
            raise WebError(
                f"No worker serves {model!r} right now. Start one with `python -m fastchat.serve.model_worker "
                f"--model-path PATH --controller-address {self.controller}`, then press Refresh.")
        return address

    def prompt(self, model: str, turns: list, message: str):
        """FastChat's conversation template for the model, filled with the finished turns."""
        from fastchat_spec.conversation import conversation_template

        conv = conversation_template(self.tokenizer_paths.get(model, model))
        for user, answer in turns:
            conv.append_message(conv.roles[0], user)
            conv.append_message(conv.roles[1], answer)
        conv.append_message(conv.roles[0], message)
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt(), conv.stop_str, conv.stop_token_ids

    def tokenizer(self, model: str):
        """The model's tokenizer when the UI was told where it lives (token-level shading), else None."""
        if model not in self.tokenizer_paths:
            self.tokenizer_notes[model] = (
                f"the UI has no local tokenizer for {model} (pass --tokenizer {model}=PATH to shade tokens)")
            return None
        try:
            return _load_tokenizer(self.tokenizer_paths[model])
        except (OSError, ValueError) as e:
            self.tokenizer_notes[model] = f"the tokenizer at {self.tokenizer_paths[model]} could not be loaded ({e})"
            return None

    def stream(self, model: str, params: dict) -> Iterator[tuple[dict, float]]:
        """(chunk, seconds since the request was sent) for each chunk the worker streams."""
        address = self.worker_address(model)
        start = time.perf_counter()
        try:
            response = requests.post(address + "/worker_generate_stream", headers=HEADERS, json=params,
                                     stream=True, timeout=self.timeout)
            response.raise_for_status()
            for raw in response.iter_lines(decode_unicode=False, delimiter=b"\0"):
                if raw:
                    yield json.loads(raw.decode()), time.perf_counter() - start
        except requests.RequestException as e:
            raise WebError(f"Lost the connection to the model worker at {address} ({type(e).__name__}: {e}). "
                           "Check that the worker is still running, then try again.") from None


@lru_cache(maxsize=8)
def _load_tokenizer(path: str):
    """The tokenizer FastChat's worker uses: the checkpoint's own, or its base model's."""
    from fastchat.model.model_adapter import get_model_adapter
    from transformers import AutoTokenizer

    from fastchat_spec.adapters.checkpoint import read_config, resolve_base_path

    tokenizer_files = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in tokenizer_files):
        path = resolve_base_path(path, read_config(path) or {})
    use_fast = getattr(get_model_adapter(path), "use_fast_tokenizer", False)
    return AutoTokenizer.from_pretrained(path, use_fast=use_fast, trust_remote_code=False)


def generation_params(model: str, prompt: str, stop, stop_token_ids, temperature, top_p, max_new_tokens,
                      spec_disable: bool = False) -> dict:
    """The worker request FastChat's Gradio server sends, plus ``spec_disable`` for the stock run."""
    params = {
        "model": model, "prompt": prompt, "temperature": float(temperature), "repetition_penalty": 1.0,
        "top_p": float(top_p), "max_new_tokens": int(max_new_tokens), "stop": stop,
        "stop_token_ids": stop_token_ids, "echo": False,
    }
    if spec_disable:
        params["spec_disable"] = True
    return params


def race(streams: dict, concurrent: bool = True) -> Iterator[tuple[str, object]]:
    """(name, item) from several chunk streams, read at once or one after the other.

    Reader threads only read the network, so each chunk is timed when it
    arrives, not when the page has caught up; the caller's thread does
    everything else. An item is a (chunk, seconds) pair, an exception, or
    ``None`` when that stream has ended.
    """
    inbox: queue.Queue = queue.Queue()

    def pump(named_streams):
        for name, stream in named_streams:
            try:
                for item in stream:
                    inbox.put((name, item))
            except WebError as e:
                inbox.put((name, e))
            except ValueError as e:  # a chunk that is not JSON
                inbox.put((name, WebError(f"The model worker sent an unreadable reply ({e}).")))
            finally:
                inbox.put((name, None))

    groups = [[pair] for pair in streams.items()] if concurrent else [list(streams.items())]
    for group in groups:
        threading.Thread(target=pump, args=(group,), daemon=True).start()
    open_streams = len(streams)
    while open_streams:
        name, item = inbox.get()
        open_streams -= item is None
        yield name, item


def follow(answers: dict, streams: dict, concurrent: bool = True) -> Iterator[str]:
    """Feed each stream into its ``Answer`` as chunks arrive; yield the stream's name after each item."""
    for name, item in race(streams, concurrent):
        answer = answers[name]
        if item is None:
            answer.finish()
        elif isinstance(item, Exception):
            answer.fail(str(item))
        elif not answer.done:
            answer.add(*item)
        yield name
