"""``generate_stream`` with the signature and contract of FastChat's own.

It yields dicts with cumulative ``text`` that only grows, ``usage``,
``finish_reason`` and ``logprobs`` (always None here), plus ``spec``: the
verification steps and tokens so far, and the draft tokens accepted per step.
Passing ``"spec_disable": true`` in the request runs FastChat's stock decoder
on the same base model (used by the side-by-side view).
"""
from __future__ import annotations

from fastchat_spec.generate.engine import Generation
from fastchat_spec.generate.request import Request, parse_request


def generate_stream(model, tokenizer, params: dict, device: str, context_len: int,
                    stream_interval: int = 2, judge_sent_end: bool = False):
    if params.get("spec_disable"):
        yield from _stock_stream(model, tokenizer, params, device, context_len, stream_interval, judge_sent_end)
        return
    request = parse_request(params, tokenizer, context_len)
    generation = Generation(model, request.prompt_ids, request.max_new_tokens, request.sampling,
                            acceptance=request.acceptance, options=request.options)
    try:
        yield from _stream(generation, tokenizer, request, max(1, int(stream_interval)))
    finally:
        generation.close()


def _stream(generation: Generation, tokenizer, request: Request, stream_interval: int):
    prompt_len = len(request.prompt_ids)
    decoder = _Decoder(tokenizer, request)
    generated: list[int] = []
    finish_reason = None
    counted = 0  # tokens that count as completion tokens
    last_yield_at = 0
    new = generation.prefill()
    while True:
        before = len(generated)
        for token in new:
            generated.append(token)
            if token in request.stop_token_ids:
                finish_reason = "stop"
                break
            counted += 1
            if counted >= request.max_new_tokens:
                finish_reason = "length"
                break
        text, hit_stop, partial = decoder.text(generated)
        if hit_stop:
            finish_reason = "stop"
            counted = decoder.tokens_before_stop(generated, before)
        if finish_reason:
            break
        if counted - last_yield_at >= stream_interval and decoder.can_yield(text, partial):
            last_yield_at = counted
            yield _chunk(text, prompt_len, counted, None, generation)
        new = generation.step()
    yield _chunk(text, prompt_len, counted, finish_reason, generation)


class _Decoder:
    """Cumulative detokenisation and stop-string handling, as FastChat does it."""

    def __init__(self, tokenizer, request: Request):
        self.tokenizer = tokenizer
        self.request = request
        self.prefix_ids = request.prompt_ids if request.echo else []
        self.search_from = len(request.prompt) if request.echo else 0
        self.last_text = ""

    def text(self, generated: list[int]) -> tuple[str, bool, bool]:
        from fastchat.utils import is_partial_stop

        text = self.tokenizer.decode(
            self.prefix_ids + generated,
            skip_special_tokens=True,
            spaces_between_special_tokens=False,
            clean_up_tokenization_spaces=True,
        )
        partial = False
        for stop in self.request.stop_strings:
            pos = text.find(stop, self.search_from)
            if pos != -1:
                return text[:pos], True, False
            partial = partial or is_partial_stop(text, stop)
        return text, False, partial

    def tokens_before_stop(self, generated: list[int], checked: int) -> int:
        """Tokens before the one that completed a stop string (it is not counted, like a stop id).

        A step can accept several tokens past the stop; usage must not depend on the drafter.
        """
        for k in range(checked + 1, len(generated) + 1):
            if self.text(generated[:k])[1]:
                return k - 1
        return len(generated)

    def can_yield(self, text: str, partial: bool) -> bool:
        """Yield only text that extends what was yielded (clients compute deltas)."""
        if partial or text.endswith("\ufffd") or not text.startswith(self.last_text):
            return False
        self.last_text = text
        return True


def _chunk(text: str, prompt_len: int, completion: int, finish_reason, generation: Generation) -> dict:
    return {
        "text": text,
        "logprobs": None,
        "usage": {
            "prompt_tokens": prompt_len,
            "completion_tokens": completion,
            "total_tokens": prompt_len + completion,
        },
        "finish_reason": finish_reason,
        # Engine counts: a last step may accept tokens past max_new_tokens or a stop (usage excludes them).
        "spec": generation.stats.as_dict(),
    }


def _stock_stream(model, tokenizer, params, device, context_len, stream_interval, judge_sent_end):
    """FastChat's own decoder on the base model, with the same ``spec`` field (one token per step)."""
    from fastchat.serve.inference import generate_stream as fastchat_generate_stream

    parse_request(params, tokenizer, context_len)  # same validation and messages as the fast path
    base = getattr(model, "base", model)
    stock_params = {k: v for k, v in params.items() if not k.startswith("spec_")}
    if stock_params.get("stop_token_ids") is not None:
        stock_params["stop_token_ids"] = list(stock_params["stop_token_ids"])
    for out in fastchat_generate_stream(base, tokenizer, stock_params, device, context_len,
                                        stream_interval, judge_sent_end):
        n = out["usage"]["completion_tokens"]
        out["spec"] = {"steps": n + 1, "tokens": n + 1, "accepted": [0] * n}
        yield out
