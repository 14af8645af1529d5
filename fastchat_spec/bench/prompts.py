"""Benchmark prompts: held-out ShareGPT first turns, or a JSONL file with ``turns`` and ``category``."""
from __future__ import annotations

import json
from dataclasses import dataclass

from fastchat_spec.conversation import conversation_template


@dataclass
class Prompt:
    text: str  # the full prompt in the model's conversation template
    category: str


def load_turns(prompts_file: str | None, limit: int) -> list[tuple[list, str]]:
    """(user turns, category) pairs: from the JSONL file, else the held-out ShareGPT first turns."""
    if prompts_file:
        return list(_read_jsonl(prompts_file))[:limit]
    from fastchat_spec.train.data import heldout_first_turns

    return [([turn], "sharegpt-heldout") for turn in heldout_first_turns(limit)]


def load_prompts(model_path: str, prompts_file: str | None, limit: int) -> list[Prompt]:
    """The first turns in the model's conversation template, ready to tokenize."""
    out = []
    for turns, category in load_turns(prompts_file, limit):
        conv = conversation_template(model_path)
        conv.append_message(conv.roles[0], turns[0])
        conv.append_message(conv.roles[1], None)
        out.append(Prompt(conv.get_prompt(), category))
    return out


def _read_jsonl(path: str):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not JSON ({e})") from None
            turns = row.get("turns") or ([row["prompt"]] if "prompt" in row else None)
            if not turns or not isinstance(turns[0], str):
                raise ValueError(f"{path}:{n} needs a 'turns' list of strings (or a 'prompt' string)")
            yield turns, str(row.get("category", "all"))
