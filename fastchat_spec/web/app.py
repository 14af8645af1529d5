"""A Gradio chat UI for FastChat workers that shows what speculative decoding buys.

It talks to an unchanged FastChat controller and model worker exactly as
FastChat's own Gradio server does (``/list_models``, ``/get_worker_address``,
``/worker_generate_stream`` with \\0-delimited JSON) and builds prompts with
FastChat's conversation templates. On top it reads the ``spec`` statistics that
our worker sends with every chunk:

* Chat: streaming answers, live tok/s, tokens per verification step (τ), a
  chart of the draft tokens each step accepted, and the answer shaded by the
  draft depth that proposed each token (see ``stats`` for how text is matched
  to tokens).
* Side by side: one prompt through speculative decoding and through the same
  worker's stock autoregressive decoder (``"spec_disable": true``), streamed
  together, with the speedup and whether the two texts are identical.

Run it with ``python -m fastchat_spec.web --controller-address URL``, or start
everything with ``python -m fastchat_spec.web.launch``.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import queue
import threading
import time
from functools import lru_cache
from typing import Iterator, Optional

import gradio as gr
import pandas as pd
import requests

from fastchat_spec.web.stats import (
    BASE_DEPTH, Answer, ControlError, accepted_per_step, check_controls, first_difference, speedup,
)

HEADERS = {"User-Agent": "fastchat-spec web UI"}
UPDATE_EVERY_S = 0.1  # at most ten page updates a second per answer; the last chunk always shows
DEPTH_COLOURS = ["#e5e7eb", "#fef08a", "#fdba74", "#fca5a5", "#f0abfc", "#c4b5fd", "#93c5fd", "#86efac"]
CHART_COLUMNS = ["step", "accepted"]


class WebError(Exception):
    """Something a user must fix or wait for; the message says what."""


# -- talking to FastChat ----------------------------------------------------------
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
        from fastchat.model.model_adapter import get_conversation_template

        conv = get_conversation_template(self.tokenizer_paths.get(model, model))
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


# -- HTML ----------------------------------------------------------------------------
def depth_colour(depth: Optional[int]) -> str:
    if depth is None:
        return "transparent"
    return DEPTH_COLOURS[min(depth, len(DEPTH_COLOURS) - 1)]


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def stats_html(answer: Optional[Answer]) -> str:
    if answer is None:
        return '<div class="spec-stats" data-state="idle">Statistics appear here while an answer streams.</div>'
    s = answer.stats
    cells = [
        ("tok_per_s", _fmt(s.tok_per_s, 1), "tokens / s"),
        ("tokens_per_step", _fmt(s.tokens_per_step), "tokens / step (τ)"),
        ("mean_accepted", _fmt(s.mean_accepted), "accepted drafts / step"),
        ("tokens", str(s.tokens), "tokens"),
        ("steps", "–" if s.steps is None else str(s.steps), "base forward passes"),
        ("seconds", _fmt(s.seconds), "seconds"),
    ]
    body = "".join(
        f'<div class="stat"><div class="stat-value" data-stat="{key}">{value}</div>'
        f'<div class="stat-label">{label}</div></div>' for key, value, label in cells)
    note = "" if s.has_spec or not s.tokens else (
        '<div class="stat-note">This worker sends no speculative statistics (a plain FastChat model).</div>')
    return f'<div class="spec-stats" data-state="{answer.state}">{body}</div>{note}'


def chart_frame(answer: Optional[Answer]) -> pd.DataFrame:
    data = accepted_per_step(answer.stats.accepted if answer else [])
    return pd.DataFrame(data, columns=CHART_COLUMNS)


def answer_html(answer: Optional[Answer], shaded: bool = True, note: str = "") -> str:
    """The answer's text, each piece coloured by its draft depth, with a legend."""
    if answer is None:
        return '<div class="answer-text"></div>'
    if answer.error and not answer.text:
        return error_html(answer.error)
    spans = []
    for seg in (answer.provenance.segments if shaded else []):
        style = f"background:{depth_colour(seg.depth)}"
        css = f"seg seg-{seg.level}" + ("" if seg.depth is None else f" depth-{seg.depth}")
        spans.append(f'<span class="{css}" style="{style}" title="{html.escape(seg.describe())}">'
                     f"{html.escape(seg.text)}</span>")
    if not shaded:
        spans.append(html.escape(answer.text))
    text = f'<div class="answer-text" data-state="{answer.state}">{"".join(spans)}</div>'
    legend = legend_html(answer, note) if shaded else ""
    error = error_html(answer.error) if answer.error else ""
    return text + legend + error


def legend_html(answer: Answer, note: str = "") -> str:
    prov = answer.provenance
    if not answer.stats.has_spec:
        return '<div class="legend">No shading: this worker sends no speculative statistics.</div>'
    deepest_colour = len(DEPTH_COLOURS) - 1  # depths beyond it share its colour
    top = min(max(prov.max_depth, 1), deepest_colour)
    items = [(BASE_DEPTH, "base model")] + [(d, f"draft depth {d}") for d in range(1, top + 1)]
    if prov.max_depth > deepest_colour:
        items[-1] = (top, f"draft depth {top}+")
    swatches = "".join(
        f'<span class="swatch" style="background:{depth_colour(d)}">{label}</span>' for d, label in items)
    how = {
        "token": "Each token is coloured by the draft depth that proposed it; grey tokens were the base "
                 "model's own (one per verification step).",
        "step": "Step-level shading: each streamed chunk is coloured by the deepest accepted draft token in it "
                f"(token-level needs the tokenizer: {note or 'it did not match the streamed text'}).",
        "mixed": "Token-level where the text re-tokenises exactly; chunks in dashed boxes are step-level "
                 "(coloured by their deepest accepted draft token).",
        "none": "",
    }[prov.level]
    return f'<div class="legend">{swatches}<div class="legend-note">{html.escape(how)}</div></div>'


def error_html(message: str) -> str:
    if not message:
        return ""
    return f'<div class="spec-error" role="alert">{html.escape(message)}</div>'


def verdict_html(spec: Answer, stock: Answer, temperature: float) -> str:
    if spec.error or stock.error:
        return error_html(spec.error or stock.error)
    if not (spec.done and stock.done):
        return '<div class="verdict" data-state="streaming">Both answers are streaming…</div>'
    diff = first_difference(spec.text, stock.text)
    identical = diff is None
    if identical and spec.stats.seconds > 0:
        # The same text: the ratio of wall times is the speedup (token counts need not be compared).
        ratio = stock.stats.seconds / spec.stats.seconds
        detail = f"the same text in {spec.stats.seconds:.2f} s instead of {stock.stats.seconds:.2f} s"
    else:
        ratio = speedup(spec.stats, stock.stats)
        detail = f"{_fmt(spec.stats.tok_per_s, 1)} vs {_fmt(stock.stats.tok_per_s, 1)} tokens/s"
    if ratio is None:
        speed = "No speedup to report (an answer was empty)."
    else:
        speed = (f"<b>{ratio:.2f}× {'faster' if ratio >= 1 else 'slower'}</b> with speculative decoding: {detail}, "
                 f"{_fmt(spec.stats.tokens_per_step)} tokens per base forward pass.")
    if identical:
        same = '<span class="ok">✓</span> The two texts are identical.'
    elif temperature > 0:
        same = (f"The texts differ from character {diff}: expected when sampling (temperature {temperature:g} "
                "draws different random tokens). Set temperature 0 to check that they are identical.")
    else:
        same = (f'<span class="bad">✗</span> The texts differ from character {diff} at temperature 0. Greedy '
                "speculative decoding must reproduce the base model's text exactly: please report this as a bug.")
    ratio_attr = "" if ratio is None else f"{ratio:.4f}"
    return (f'<div class="verdict" data-state="done" data-identical="{str(identical).lower()}" '
            f'data-speedup="{ratio_attr}"><div>{speed}</div><div>{same}</div></div>')


# -- event handlers --------------------------------------------------------------------
def _controls(temperature, top_p, max_new_tokens) -> Optional[str]:
    try:
        check_controls(temperature, top_p, max_new_tokens)
    except ControlError as e:
        return str(e)
    return None


def _chat_messages(turns: list, pending: Optional[tuple] = None) -> list:
    messages = []
    for user, answer in turns + ([pending] if pending else []):
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": answer})
    return messages


def make_handlers(backend: Backend):
    def refresh_models(current: Optional[str] = None):
        try:
            models = backend.models()
        except WebError as e:
            return gr.update(choices=[], value=None), error_html(str(e))
        value = current if current in models else (models[0] if models else None)
        note = "" if models else error_html(
            f"The controller at {backend.controller} lists no models yet: start a model worker "
            "(it registers once its model has loaded), then press Refresh.")
        return gr.update(choices=models, value=value), note

    def chat(message, turns, model, temperature, top_p, max_new_tokens):
        turns = list(turns or [])
        idle = (_chat_messages(turns), turns, message, stats_html(None), chart_frame(None), answer_html(None))
        problem = _controls(temperature, top_p, max_new_tokens)
        if not problem and not model:
            problem = "Pick a model first (press Refresh if the list is empty)."
        if not problem and not (message or "").strip():
            problem = "Type a message first."
        if problem:
            yield idle + (error_html(problem),)
            return
        prompt, stop, stop_ids = backend.prompt(model, turns, message)
        answer = Answer(backend.tokenizer(model))
        note = backend.tokenizer_notes.get(model, "")
        params = generation_params(model, prompt, stop, stop_ids, temperature, top_p, max_new_tokens)
        last = 0.0
        for _ in follow({"chat": answer}, {"chat": backend.stream(model, params)}):
            now = time.perf_counter()
            if answer.done or now - last >= UPDATE_EVERY_S:
                last = now
                shown = answer.text.strip() or ("" if answer.done else "▌")
                if answer.error:
                    shown = (shown + "\n\n" if shown else "") + answer.error
                yield (_chat_messages(turns, (message, shown)), turns, "", stats_html(answer), chart_frame(answer),
                       answer_html(answer, note=note), error_html(answer.error or ""))
        if not answer.error:
            turns.append((message, answer.text.strip()))
        yield (_chat_messages(turns) if not answer.error else _chat_messages(turns, (message, answer.error)),
               turns, "", stats_html(answer), chart_frame(answer), answer_html(answer, note=note),
               error_html(answer.error or ""))

    def clear():
        return [], [], stats_html(None), chart_frame(None), answer_html(None), ""

    def side_by_side(message, model, temperature, top_p, max_new_tokens, sequential):
        empty = ("", stats_html(None), "", stats_html(None), "")
        problem = _controls(temperature, top_p, max_new_tokens)
        if not problem and not model:
            problem = "Pick a model first (press Refresh if the list is empty)."
        if not problem and not (message or "").strip():
            problem = "Type a prompt first."
        if problem:
            yield empty + (error_html(problem),)
            return
        prompt, stop, stop_ids = backend.prompt(model, [], message)
        answers = {"spec": Answer(backend.tokenizer(model)), "stock": Answer()}
        note = backend.tokenizer_notes.get(model, "")
        streams = {
            name: backend.stream(model, generation_params(
                model, prompt, stop, stop_ids, temperature, top_p, max_new_tokens, spec_disable=(name == "stock")))
            for name in answers
        }

        def view():
            spec, stock = answers["spec"], answers["stock"]
            return (answer_html(spec, note=note), stats_html(spec), answer_html(stock, shaded=False),
                    stats_html(stock), verdict_html(spec, stock, float(temperature)), "")

        last = 0.0
        for name in follow(answers, streams, concurrent=not sequential):
            now = time.perf_counter()
            if answers[name].done or now - last >= UPDATE_EVERY_S:
                last = now
                yield view()
        yield view()

    return refresh_models, chat, clear, side_by_side


# -- the page --------------------------------------------------------------------------
CSS = """
.spec-stats {display:flex; flex-wrap:wrap; gap:10px;}
.spec-stats .stat {min-width:96px; padding:6px 10px; border-radius:8px; background:var(--block-background-fill);
  border:1px solid var(--border-color-primary);}
.stat-value {font-size:1.5em; font-weight:600; font-variant-numeric:tabular-nums;}
.stat-label, .legend-note, .stat-note {font-size:0.85em; opacity:0.8;}
.answer-text {white-space:pre-wrap; line-height:1.7; font-family:var(--font-mono); padding:8px; min-height:2em;
  border:1px solid var(--border-color-primary); border-radius:8px; overflow-wrap:anywhere;}
.answer-text .seg {color:#111; border-radius:3px;}
.answer-text .seg-step {outline:1px dashed #555; outline-offset:-1px;}
.legend {margin-top:6px;}
.legend .swatch {display:inline-block; color:#111; padding:1px 8px; margin:2px 4px 2px 0; border-radius:4px;
  font-size:0.85em;}
.spec-error {color:#b91c1c; background:#fee2e2; border:1px solid #fca5a5; border-radius:8px; padding:8px 12px;
  margin:6px 0;}
.verdict {font-size:1.1em; padding:8px 0;}
.verdict .ok {color:#15803d; font-weight:700;}
.verdict .bad {color:#b91c1c; font-weight:700;}
"""

INTRO = """## fastchat-spec: speculative decoding in FastChat
Chat with any model your FastChat controller lists. With a speculative model (Medusa, Hydra, Chimera,
CLLM/Jacobi) each answer shows its speed, the tokens generated per base-model forward pass (τ), and which
draft depth proposed each accepted token. **Side by side** runs one prompt through speculative and through
stock autoregressive decoding on the same worker."""


def build_demo(backend: Backend) -> gr.Blocks:
    refresh_models, chat, clear, side_by_side = make_handlers(backend)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
    with gr.Blocks(title="fastchat-spec", theme=theme, css=CSS, analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(label="Model", choices=[], interactive=True, scale=4, elem_id="model-select")
            refresh = gr.Button("Refresh", scale=1, elem_id="refresh-models")
        model_error = gr.HTML(elem_id="model-error")
        with gr.Accordion("Parameters", open=True):
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)",
                                        elem_id="temperature")
                top_p = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="top_p", elem_id="top-p")
                max_new_tokens = gr.Number(value=256, precision=0, label="max_new_tokens (the API's max_tokens)",
                                           elem_id="max-new-tokens")
        controls = [temperature, top_p, max_new_tokens]
        with gr.Tab("Chat", elem_id="tab-chat"):
            turns = gr.State([])
            chatbot = gr.Chatbot(type="messages", height=320, elem_id="chatbot", show_label=False)
            with gr.Row():
                message = gr.Textbox(placeholder="Ask something and press Enter", show_label=False, scale=5,
                                     elem_id="chat-input")
                send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                clear_btn = gr.Button("Clear", scale=1, elem_id="chat-clear")
            chat_error = gr.HTML(elem_id="chat-error")
            with gr.Row():
                with gr.Column(scale=3):
                    chat_stats = gr.HTML(stats_html(None), elem_id="chat-stats")
                    gr.Markdown("**Where speculation pays** (hover a piece for its step)")
                    chat_text = gr.HTML(answer_html(None), elem_id="chat-provenance")
                with gr.Column(scale=2):
                    chart = gr.BarPlot(chart_frame(None), x="step", y="accepted", x_title="verification step",
                                       y_title="accepted draft tokens", title="Draft tokens accepted per step",
                                       height=260, elem_id="chat-chart", sort="x")
        with gr.Tab("Side by side", elem_id="tab-sbs"):
            with gr.Row():
                sbs_message = gr.Textbox(placeholder="One prompt for both decoders", show_label=False, scale=5,
                                         elem_id="sbs-input")
                sbs_run = gr.Button("Run both", variant="primary", scale=1, elem_id="sbs-run")
            sequential = gr.Checkbox(False, label="one after the other (cleaner timing on a busy machine; "
                                                  "side by side streams both at once)", elem_id="sbs-sequential")
            sbs_error = gr.HTML(elem_id="sbs-error")
            verdict = gr.HTML(elem_id="sbs-verdict")
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### Speculative decoding")
                    spec_stats = gr.HTML(stats_html(None), elem_id="sbs-spec-stats")
                    spec_text = gr.HTML(elem_id="sbs-spec-text")
                with gr.Column():
                    gr.Markdown("### Stock autoregressive decoding (same worker, `spec_disable`)")
                    stock_stats = gr.HTML(stats_html(None), elem_id="sbs-stock-stats")
                    stock_text = gr.HTML(elem_id="sbs-stock-text")

        demo.load(refresh_models, [model], [model, model_error])
        refresh.click(refresh_models, [model], [model, model_error])
        chat_outputs = [chatbot, turns, message, chat_stats, chart, chat_text, chat_error]
        for trigger in (message.submit, send.click):
            trigger(chat, [message, turns, model] + controls, chat_outputs)
        clear_btn.click(clear, None, [chatbot, turns, chat_stats, chart, chat_text, chat_error])
        sbs_outputs = [spec_text, spec_stats, stock_text, stock_stats, verdict, sbs_error]
        for trigger in (sbs_message.submit, sbs_run.click):
            trigger(side_by_side, [sbs_message, model] + controls + [sequential], sbs_outputs)
    return demo


# -- command line ----------------------------------------------------------------------
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


def serve(args, on_ready=None) -> None:
    backend = Backend(args.controller_address, parse_tokenizer_args(args.tokenizer))
    demo = build_demo(backend)
    demo.queue(default_concurrency_limit=args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, show_api=False, ssr_mode=False,
                prevent_thread_lock=on_ready is not None, quiet=False)
    if on_ready is not None:
        on_ready(f"http://{args.host}:{args.port}")
        demo.block_thread()


def main(argv=None) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    serve(build_parser().parse_args(argv))
