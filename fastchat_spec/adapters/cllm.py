"""CLLM checkpoints: plain causal LMs decoded with Jacobi windows.

A consistency LLM (Kou et al. 2024, arXiv 2403.00835) is the base model itself,
fine-tuned so that Jacobi decoding converges fast; it has no drafter. The
adapter therefore loads the folder as its own base (through the FastChat
adapter that stock FastChat would use for it) and hands FastChat a
``SpecModel`` whose drafter is None and whose method is ``cllm``, so requests
run through the engine with the Jacobi proposer.

A folder or name is a CLLM when
* the path contains "consistency-llm" (FastChat main's rule, which covers the
  published ``cllm/consistency-llm-*`` checkpoints),
* its last component contains "cllm" (only the last one, so that a parent
  folder such as ``test_cllm0/`` does not turn every model under it into a
  CLLM), or
* its config.json carries the flag our trainer writes,
  ``"fastchat_spec_method": "cllm"``, or a ``"cllm"`` object.

A hub id (``cllm/consistency-llm-7b-sharegpt48k``) loads as the other
methods' do (``SpecAdapter.load_model``): its config.json and tokenizer come
from its snapshot, and the base, which is the checkpoint, loads by its hub id,
so Hugging Face fetches the weights as it would for stock FastChat.

The Jacobi window length comes from the request (``n_token_seq_length``, as in
FastChat main), else from ``config.json``'s ``cllm.n_token_seq_length``, else 16.
The length of the branch of guesses copied from the context beside the window
(``generate/proposers/jacobi.py``) comes from the request's
``spec_options.lookup_tokens``, else ``cllm.lookup_tokens``, else the window's
guesses.

Conversation template: ``fastchat_conv_template`` from config.json if present
(our trainer keeps the base's); else FastChat main's ``cllm`` template for the
"consistency-llm" rule; else the template FastChat picks for the name.
FastChat 0.2.36 lacks main's ``cllm`` template and its separator style, so this
module registers an equivalent one (see ``CllmConversation``).
"""
from __future__ import annotations

import dataclasses
import json
import os

from fastchat.conversation import Conversation, SeparatorStyle, register_conv_template

from fastchat_spec.adapters.base import SpecAdapter
from fastchat_spec.adapters.checkpoint import cached_checkpoint_folder, read_config, read_json
from fastchat_spec.conversation import conversation_template
from fastchat_spec.generate.proposers.jacobi import LOOKUP_OPTION, checked_window, lookup_length
from fastchat_spec.spec_model import SpecConfig

FLAG = "fastchat_spec_method"  # config.json key our trainer writes, value "cllm"
CONFIG_SECTION = "cllm"  # config.json object with the Jacobi settings, e.g. {"n_token_seq_length": 16}
WINDOW_KEY = "n_token_seq_length"  # in CONFIG_SECTION; the name of FastChat main's request key
MAIN_RULE = "consistency-llm"  # FastChat main's CllmAdapter.match
NAME_MARK = "cllm"
TEMPLATE = "cllm"


def is_cllm_name(model_path: str) -> bool:
    path = model_path.lower()
    return MAIN_RULE in path or NAME_MARK in os.path.basename(os.path.normpath(path))


def has_cllm_flag(config: dict) -> bool:
    return config.get(FLAG) == "cllm" or isinstance(config.get(CONFIG_SECTION), dict)


class CllmAdapter(SpecAdapter):
    method = "cllm"
    name_prefixes = (NAME_MARK, MAIN_RULE)

    def match(self, model_path: str) -> bool:
        if is_cllm_name(model_path):
            return True
        if os.path.isdir(model_path):
            config = read_config(model_path)
            return config is not None and self.detect(config, model_path)
        return False

    def detect(self, config, path):
        return has_cllm_flag(config)

    def spec_config(self, config, path):
        section = config.get(CONFIG_SECTION) or {}
        file = os.path.join(path, "config.json")
        window = checked_window(section.get(WINDOW_KEY), f"{file}: {CONFIG_SECTION}.{WINDOW_KEY}")
        options = {}
        if section.get(LOOKUP_OPTION) is not None:  # the context branch's default for this checkpoint
            try:
                options[LOOKUP_OPTION] = lookup_length({LOOKUP_OPTION: section[LOOKUP_OPTION]}, window)
            except ValueError as e:
                raise ValueError(f"{file}: {CONFIG_SECTION}.{e}") from None
        return SpecConfig(method="cllm", num_heads=window, options=options)

    def base_path(self, path, config):
        return path  # the checkpoint is the base

    def load_drafter(self, path, config, spec, base):
        return None

    def get_default_conv_template(self, model_path: str):
        # The checkpoint is its own base; FastChat main's rule brings main's template. A hub id's
        # config.json is read from its cached snapshot, when there is one (nothing is fetched).
        folder = cached_checkpoint_folder(model_path) or model_path
        return conversation_template(folder, base_path=model_path,
                                     method_template=TEMPLATE if MAIN_RULE in model_path.lower() else None)


def write_cllm_checkpoint(out_dir: str, model, tokenizer, window: int, extra_config: dict | None = None,
                          state_dict: dict | None = None) -> str:
    """``model`` and ``tokenizer`` as a full Hugging Face folder flagged for this adapter.

    config.json gets ``"fastchat_spec_method": "cllm"`` and ``"cllm":
    {"n_token_seq_length": window, **extra_config}``; ``model`` itself is not
    changed. Returns the folder.
    """
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    file = os.path.join(out_dir, "config.json")
    config = read_json(file)
    config[FLAG] = "cllm"
    config[CONFIG_SECTION] = {WINDOW_KEY: int(window), **(extra_config or {})}
    with open(file, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return out_dir


@dataclasses.dataclass
class CllmConversation(Conversation):
    """FastChat main's ``cllm`` template on 0.2.36's separator styles.

    Main renders ``SeparatorStyle.CLLM`` as ADD_COLON_TWO over the last two
    messages only (the system prompt, then the latest user turn and the open
    assistant turn). This subclass uses ADD_COLON_TWO and keeps that window;
    ``copy`` is overridden so ``get_conv_template`` keeps the class.
    FastChat's OpenAI-compatible server rebuilds templates as plain
    ``Conversation`` objects from their fields, so there a multi-turn request
    gets the whole history in the same format; single-turn prompts are
    identical everywhere.
    """

    def get_prompt(self) -> str:
        full = self.messages
        self.messages = full[-2:]
        try:
            return super().get_prompt()
        finally:
            self.messages = full

    def copy(self):
        plain = super().copy()
        return CllmConversation(**{f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)})


def register_cllm_template() -> None:
    """Register (or re-register, idempotently) FastChat main's ``cllm`` template."""
    register_conv_template(
        CllmConversation(
            name=TEMPLATE,
            system_message="A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions.",
            roles=("USER", "ASSISTANT"),
            sep_style=SeparatorStyle.ADD_COLON_TWO,
            sep=" ",
            sep2="</s>",
        ),
        override=True,
    )


register_cllm_template()

