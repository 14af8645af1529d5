"""The page: controls, the Chat tab, the Side-by-side tab, their styles, and which handler each event runs.

Only Gradio components and wiring live here; what the components show comes
from ``rendering`` and what the events do from ``handlers``. The ``elem_id``s
are what the browser test (tests/test_web_browser.py) drives.
"""
from __future__ import annotations

import gradio as gr

from fastchat_spec.web.client import Backend
from fastchat_spec.web.handlers import make_handlers
from fastchat_spec.web.rendering import answer_html, chart_frame, stats_html

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
