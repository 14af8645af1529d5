"""A FastChat request, validated once, with errors a user can act on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fastchat_spec.generate.sampling import SamplingParams


@dataclass
class Request:
    prompt: str
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop_strings: list[str]
    stop_token_ids: list[int]
    echo: bool
    acceptance: str
    options: dict


def parse_request(params: dict, tokenizer, context_len: int) -> Request:
    prompt = params.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    sampling = SamplingParams.from_request(params)
    max_new_tokens = params.get("max_new_tokens", 256)
    try:
        max_new_tokens = int(max_new_tokens)
    except (TypeError, ValueError):
        raise ValueError(f"max_new_tokens must be an integer, got {max_new_tokens!r}") from None
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    if max_new_tokens >= context_len:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} does not fit the model's context of {context_len} tokens; "
            f"ask for fewer than {context_len}"
        )
    prompt_ids = tokenizer(prompt).input_ids
    if len(prompt_ids) > context_len:
        raise ValueError(
            f"the prompt is {len(prompt_ids)} tokens, longer than the model's context of {context_len} tokens; "
            "shorten the conversation"
        )
    # FastChat keeps the end of the prompt so that the answer fits the context.
    prompt_ids = prompt_ids[-(context_len - max_new_tokens - 1):]
    stop_token_ids = _stop_token_ids(params.get("stop_token_ids"), tokenizer.eos_token_id)
    return Request(
        prompt=prompt,
        prompt_ids=prompt_ids,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        stop_strings=_stop_strings(params.get("stop")),
        stop_token_ids=stop_token_ids,
        echo=bool(params.get("echo", True)),
        acceptance=str(params.get("spec_acceptance", "lossless")),
        options=_options(params),
    )


def _options(params: dict) -> dict:
    """Per-request method options; FastChat main's ``n_token_seq_length`` is the Jacobi window."""
    options = params.get("spec_options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"spec_options must be an object, got {options!r}")
    options = dict(options)
    if params.get("n_token_seq_length") is not None:
        try:
            options["n_token_seq_length"] = int(params["n_token_seq_length"])
        except (TypeError, ValueError):
            raise ValueError(f"n_token_seq_length must be an integer, got {params['n_token_seq_length']!r}") from None
    return options


def _stop_strings(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")


def _stop_token_ids(ids: Optional[list], eos: Optional[int]) -> list[int]:
    if ids is None:
        ids = []
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"stop_token_ids must be a list of integers, got {ids!r}")
    out = list(ids)  # never mutate the caller's list
    if eos is not None and eos not in out:
        out.append(eos)
    return out
