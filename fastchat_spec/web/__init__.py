"""A Gradio chat UI that shows what speculative decoding buys.

``python -m fastchat_spec.web`` serves the UI for a running FastChat controller;
``python -m fastchat_spec.web.launch`` starts the controller, a model worker
and the UI in one command.
"""
