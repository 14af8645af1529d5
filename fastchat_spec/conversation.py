"""Which FastChat conversation template a model is served with: one rule, asked by every caller.

1. ``fastchat_conv_template`` in the model folder's config.json (our base
   builder and trainers record the template the model was trained with);
2. for one of our checkpoints, the same key in its base's config.json;
3. else the method's own template, where it has one (FastChat main's ``cllm``);
4. else the template stock FastChat picks for the base.

Our adapters' ``get_default_conv_template`` call this with the base they
resolved; everyone else (the web UI, scripts) calls it with the model path
alone and FastChat's own lookup, which asks our adapters first, answers step 4.
"""
from __future__ import annotations

import os
from typing import Optional

CONFIG_KEY = "fastchat_conv_template"


def configured_template(folder: Optional[str]) -> Optional[str]:
    """The template ``folder``/config.json names, if it is a folder and names one."""
    from fastchat_spec.adapters.checkpoint import read_config

    if not folder or not os.path.isdir(folder):
        return None
    return (read_config(folder) or {}).get(CONFIG_KEY) or None


def conversation_template(model_path: str, base_path: Optional[str] = None, method_template: Optional[str] = None):
    """A fresh FastChat ``Conversation`` for ``model_path`` (a folder, a hub id or a worker's model name).

    ``base_path``: the base of one of our checkpoints, as its adapter resolved
    it; without it, FastChat's ``get_conversation_template`` decides step 4.
    ``method_template``: the method's template for step 3.
    """
    from fastchat.conversation import get_conv_template

    for folder in (model_path, base_path):
        name = configured_template(folder)
        if name:
            return get_conv_template(name)
    if method_template:
        return get_conv_template(method_template)
    if base_path is None:
        from fastchat.model.model_adapter import get_conversation_template

        return get_conversation_template(model_path)
    from fastchat_spec.adapters.base import fastchat_adapter_for

    return fastchat_adapter_for(base_path).get_default_conv_template(base_path)
