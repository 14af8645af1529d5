"""What the web UI shows: statistics, the shaded answer, its legend, errors, the verdict, chat messages.

Text from a model worker or a user is shown as the characters it is: the
HTML panels pass it through ``html.escape``, and the Chatbot's Markdown gets
it through ``markdown_without_html``. An answer containing ``<script>`` or
``<img onerror=...>`` therefore never runs or loads anything in the browser
(tests/test_web_browser.py checks this in Chromium). Plain functions of
``stats.Answer``, so they are tested without Gradio or a browser.
"""
from __future__ import annotations

import html
import re
from typing import Optional

import pandas as pd

from fastchat_spec.web.stats import BASE_DEPTH, Answer, accepted_per_step, first_difference, speedup

DEPTH_COLOURS = ["#e5e7eb", "#fef08a", "#fdba74", "#fca5a5", "#f0abfc", "#c4b5fd", "#93c5fd", "#86efac"]
CHART_COLUMNS = ["step", "accepted"]


def depth_colour(depth: Optional[int]) -> str:
    if depth is None:
        return "transparent"
    return DEPTH_COLOURS[min(depth, len(DEPTH_COLOURS) - 1)]


def number_text(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def stats_html(answer: Optional[Answer]) -> str:
    if answer is None:
        return '<div class="spec-stats" data-state="idle">Statistics appear here while an answer streams.</div>'
    s = answer.stats
    cells = [
        ("tok_per_s", number_text(s.tok_per_s, 1), "tokens / s"),
        ("tokens_per_step", number_text(s.tokens_per_step), "tokens / step (τ)"),
        ("mean_accepted", number_text(s.mean_accepted), "accepted drafts / step"),
        ("tokens", str(s.tokens), "tokens"),
        ("steps", "–" if s.steps is None else str(s.steps), "base forward passes"),
        ("seconds", number_text(s.seconds), "seconds"),
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
        detail = f"{number_text(spec.stats.tok_per_s, 1)} vs {number_text(stock.stats.tok_per_s, 1)} tokens/s"
    if ratio is None:
        speed = "No speedup to report (an answer was empty)."
    else:
        speed = (f"<b>{ratio:.2f}× {'faster' if ratio >= 1 else 'slower'}</b> with speculative decoding: {detail}, "
                 f"{number_text(spec.stats.tokens_per_step)} tokens per base forward pass.")
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




# -- the chatbot ---------------------------------------------------------------------------
CODE_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
BACKTICKS = re.compile(r"`+")


def chat_messages(turns: list, pending: Optional[tuple] = None) -> list:
    """The Chatbot's messages: the finished turns, then the one still streaming."""
    messages = []
    for user, answer in turns + ([pending] if pending else []):
        messages.append({"role": "user", "content": markdown_without_html(user)})
        messages.append({"role": "assistant", "content": markdown_without_html(answer)})
    return messages


def markdown_without_html(text: str) -> str:
    """``text`` for the Chatbot's Markdown renderer, with markup outside code shown as characters.

    Gradio's Chatbot renders Markdown and lets sanitised HTML through, so a
    model that writes ``<img src=...>`` would make the browser fetch it.
    Escaping ``&`` and ``<`` keeps every tag out; code is left as written,
    because Markdown already shows code literally and would print ``&lt;``
    there. Fences and code spans are found line by line, which covers what
    models write (a span broken across lines is shown with entities, never run).
    """
    out, fence = [], None
    for line in text.splitlines(keepends=True):
        opener = CODE_FENCE.match(line)
        if fence is not None:
            if opener and _closes(opener.group(1), fence, line):
                fence = None
            out.append(line)
        elif opener:
            fence = opener.group(1)
            out.append(line)
        else:
            out.append(_escape_outside_code_spans(line))
    return "".join(out)


def _closes(marker: str, fence: str, line: str) -> bool:
    """A closing fence: the same character, at least as long, nothing after it."""
    return marker[0] == fence[0] and len(marker) >= len(fence) and not line.strip().strip(marker[0])


def _escape_outside_code_spans(line: str) -> str:
    pieces, done = [], 0
    runs = list(BACKTICKS.finditer(line))
    k = 0
    while k < len(runs):
        opener = runs[k]
        closer = next((j for j in range(k + 1, len(runs)) if runs[j].group() == opener.group()), None)
        if closer is None:  # an unmatched run of backticks is plain text
            k += 1
            continue
        pieces.append(_escape_markup(line[done:opener.start()]))
        pieces.append(line[opener.start():runs[closer].end()])
        done, k = runs[closer].end(), closer + 1
    pieces.append(_escape_markup(line[done:]))
    return "".join(pieces)


def _escape_markup(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;")
