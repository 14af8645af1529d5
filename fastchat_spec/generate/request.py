"""A FastChat request, validated once, with errors a user can act on.

``RequestError`` carries FastChat's error code for the problem, which the
worker puts in its error chunk and FastChat's API server returns with HTTP 400.
``check_body`` is the part any FastChat worker can check before it takes a
concurrency slot (the hook's worker endpoints answer a failure with HTTP 400);
``parse_request`` checks the rest against the model's tokenizer and context.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastchat.constants import ErrorCode

from fastchat_spec.generate.prompt_ids import prompt_ids as tokenized_prompt
from fastchat_spec.generate.sampling import SamplingParams

# A tokenizer's normaliser (NFKC) can merge a few characters into one; this margin keeps
# the "cannot fit" bound on prompt characters safe for them.
NORMALISER_MARGIN = 4
MAX_TOKEN_ID = 2**63 - 1  # what a device tensor of token ids can hold


class RequestError(ValueError):
    """A request that cannot be served as sent; the message names the key and the fix."""

    def __init__(self, message: str, error_code: int = ErrorCode.PARAM_OUT_OF_RANGE):
        super().__init__(message)
        self.error_code = int(error_code)


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
    logprobs: bool = False  # FastChat's ``logprobs``: the base's log-probability of every token


def parse_request(params: dict, tokenizer, context_len: int) -> Request:
    check_body(params)
    prompt = params["prompt"]
    try:
        sampling = SamplingParams.from_request(params)
    except ValueError as e:
        raise RequestError(str(e)) from None
    max_new_tokens = _max_new_tokens(params.get("max_new_tokens", 256), context_len)
    logprobs = _logprobs(params.get("logprobs"))
    prompt_ids = _prompt_ids(prompt, tokenizer, context_len)
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
        logprobs=logprobs,
    )


def check_body(params) -> None:
    """A generate request at all: a JSON object whose ``prompt`` is a string of whole characters."""
    if not isinstance(params, dict):
        raise RequestError(f"a generate request is a JSON object with a 'prompt' string, got {json_kind(params)}")
    check_text("prompt", params.get("prompt"))


def check_text(name: str, text) -> None:
    if not isinstance(text, str):
        raise RequestError(f"{name} must be a string, got {json_kind(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a JSON "\ud83d" escape without its pair; tokenizers raise a TypeError on it
        raise RequestError(f"{name} is not valid Unicode: lone surrogate {text[e.start]!r} at character {e.start} "
                           "(half of a UTF-16 pair?); send whole characters") from None


def json_kind(value) -> str:
    """What a decoded JSON value is, in JSON's words (for messages about a body)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    kinds = {str: "a string", list: "an array", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def _max_new_tokens(value, context_len: int) -> int:
    try:
        max_new_tokens = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
        raise RequestError(f"max_new_tokens must be an integer, got {value!r}") from None
    if max_new_tokens <= 0:
        raise RequestError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    if max_new_tokens >= context_len:
        raise RequestError(
            f"max_new_tokens={max_new_tokens} does not fit the model's context of {context_len} tokens; "
            f"ask for fewer than {context_len}", ErrorCode.CONTEXT_OVERFLOW)
    return max_new_tokens


def _logprobs(value) -> bool:
    """FastChat's ``logprobs`` (OpenAI's completions field): an integer >= 0 turns them on, None leaves them off.

    As FastChat's own decoder, the answer carries the log-probability of each token alone (OpenAI's
    ``logprobs: 0``); ``top_logprobs`` stay empty whatever the number asks for.
    """
    if value is None or isinstance(value, bool):  # a JSON true or false says it alone
        return bool(value)
    if not isinstance(value, int) or value < 0:
        raise RequestError(f"logprobs must be an integer >= 0 (the number of top alternatives, as OpenAI's "
                           f"completions), or null; got {value!r}")
    return True


def _prompt_ids(prompt: str, tokenizer, context_len: int) -> list[int]:
    """The prompt's ids. One longer than the context keeps its last tokens (``parse_request``), as FastChat's
    decoder does: its CLI relies on that once a chat outgrows the context (its API server refuses such
    prompts itself, with their token count)."""
    _refuse_prompt_too_long_to_tokenize(prompt, tokenizer, context_len)
    return tokenized_prompt(tokenizer, prompt)


def _refuse_prompt_too_long_to_tokenize(prompt: str, tokenizer, context_len: int) -> None:
    """A prompt far beyond the context is refused before tokenizing (a megabyte costs a second of CPU).

    No token stands for more characters than the longest string in the
    vocabulary, so beyond ``context_len`` times that (with a margin for
    normalisers) the prompt surely has more tokens than the context holds:
    several times as many, of which FastChat's decoder would keep the
    last ones. Such a body is refused; a prompt merely longer than the
    context is cut as FastChat cuts it.
    """
    if len(prompt) <= NORMALISER_MARGIN * context_len:  # every token holds >= 1 character: no vocabulary needed
        return
    longest = _longest_token(tokenizer)
    if longest is None:  # a tokenizer without a vocabulary to read: tokenize and count
        return
    limit = NORMALISER_MARGIN * longest * context_len
    if len(prompt) > limit:
        raise RequestError(
            f"the prompt is {len(prompt)} characters, more than the model's context of {context_len} tokens can "
            f"hold (at most {limit} characters: no token here is longer than {longest}); shorten the conversation",
            ErrorCode.CONTEXT_OVERFLOW)


def _longest_token(tokenizer) -> int | None:
    """The most characters one token's string has (byte tokens like ``<0x0A>`` only overstate it)."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    longest = max((len(piece) for piece in get_vocab()), default=0) if get_vocab is not None else 0
    return longest or None


def _options(params: dict) -> dict:
    """Per-request method options; FastChat main's ``n_token_seq_length`` is the Jacobi window."""
    options = params.get("spec_options") or {}
    if not isinstance(options, dict):
        raise RequestError(f"spec_options must be an object, got {options!r}")
    options = dict(options)
    if params.get("n_token_seq_length") is not None:
        try:
            options["n_token_seq_length"] = int(params["n_token_seq_length"])
        except (TypeError, ValueError, OverflowError):
            raise RequestError(f"n_token_seq_length must be an integer, got {params['n_token_seq_length']!r}") from None
    return options


def _stop_strings(stop) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise RequestError(f"stop must be a string or a list of strings, got {_short(stop)}")


def _stop_token_ids(ids: list | None, eos: int | None) -> list[int]:
    """Token ids to stop at; an id the vocabulary lacks is never generated, so it is harmless, as in FastChat."""
    if ids is None:
        ids = []
    if not isinstance(ids, (list, tuple)) or not all(_is_token_id(i) for i in ids):
        raise RequestError(f"stop_token_ids must be a list of token ids (integers >= 0), got {_short(ids)}")
    out = list(ids)  # never mutate the caller's list
    if eos is not None and eos not in out:
        out.append(eos)
    return out


def _is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID


def _short(value, limit: int = 200) -> str:
    """``repr`` cut to a length that fits an error message (bodies can be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
