"""What the page's buttons do: list models, stream a chat answer, run both decoders side by side.

Each handler is a generator of Gradio outputs: it checks the inputs, sends
FastChat's worker request through ``client``, and redraws through
``rendering`` at most every ``UPDATE_EVERY_S`` (and always on the last chunk).
``make_handlers`` takes the backend as an argument so tests drive the handlers
with a fake one.
"""
from __future__ import annotations

import time
from typing import Optional

import gradio as gr

from fastchat_spec.web.client import Backend, WebError, follow, generation_params
from fastchat_spec.web.rendering import answer_html, chart_frame, chat_messages, error_html, stats_html, verdict_html
from fastchat_spec.web.stats import Answer, ControlError, check_controls

UPDATE_EVERY_S = 0.1  # at most ten page updates a second per answer; the last chunk always shows


def input_problem(model, message, what: str, temperature, top_p, max_new_tokens) -> Optional[str]:
    """Why the request cannot be sent (the API's own message for a bad control), or None."""
    try:
        check_controls(temperature, top_p, max_new_tokens)
    except ControlError as e:
        return str(e)
    if not model:
        return "Pick a model first (press Refresh if the list is empty)."
    if not (message or "").strip():
        return f"Type {what} first."
    return None


def make_handlers(backend: Backend):
    """(refresh_models, chat, clear, side_by_side), the event handlers ``layout.build_demo`` wires up."""

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
        idle = (chat_messages(turns), turns, message, stats_html(None), chart_frame(None), answer_html(None))
        problem = input_problem(model, message, "a message", temperature, top_p, max_new_tokens)
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
                yield (chat_messages(turns, (message, shown)), turns, "", stats_html(answer), chart_frame(answer),
                       answer_html(answer, note=note), error_html(answer.error or ""))
        if not answer.error:
            turns.append((message, answer.text.strip()))
        yield (chat_messages(turns) if not answer.error else chat_messages(turns, (message, answer.error)),
               turns, "", stats_html(answer), chart_frame(answer), answer_html(answer, note=note),
               error_html(answer.error or ""))

    def clear():
        return [], [], stats_html(None), chart_frame(None), answer_html(None), ""

    def side_by_side(message, model, temperature, top_p, max_new_tokens, sequential):
        empty = ("", stats_html(None), "", stats_html(None), "")
        problem = input_problem(model, message, "a prompt", temperature, top_p, max_new_tokens)
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
