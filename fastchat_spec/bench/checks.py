"""What ``bench.load`` checks in every answer: the sequential reference, and empty, garbled or mismatched replies.

The reference of a (prompt, max_tokens) is its answer with one client,
non-streamed and streamed. Under load every reply must equal its reference:
no failure, no empty text, no character a clean decode does not give, streamed
deltas that add up to the final text, and the same text.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastchat_spec.bench.client import Reply, generated_tokens

if TYPE_CHECKING:
    from fastchat_spec.bench.load import Planned

CONTEXT_OVERFLOW = 40303  # FastChat's ErrorCode.CONTEXT_OVERFLOW: the prompt does not fit the model
PROBLEMS = ("failed", "empty", "garbled", "mismatched")


# ----------------------------------------------------------------------------- reference answers


@dataclass
class Reference:
    """The sequential (1 client) answers of one (prompt, max_tokens)."""

    text: str  # non-streamed: the final text
    stream_text: str  # the streamed deltas, joined
    tokens: int  # completion tokens of the non-streamed answer

    def answer(self, stream: bool) -> str:
        return self.stream_text if stream else self.text

    @property
    def stream_equals_final(self) -> bool:
        return self.stream_text == final_as_streamed(self.text)


def final_as_streamed(text: str) -> str:
    # FastChat's API server drops U+FFFD (a character still incomplete at that step) from deltas.
    return text.replace("\ufffd", "")


def collect_references(send, questions: list[str], plan: list[Planned]) -> tuple[dict, list[dict]]:
    """Every key of the plan, non-streamed then streamed, one at a time.

    ``send(question, max_tokens, stream) -> Reply``. Returns ({key: Reference}, skipped):
    a key whose prompt the model's context cannot hold is skipped; any other error
    stops the run (the servers are not serving, so no load result would mean anything).
    """
    references, skipped = {}, []
    for key in sorted({p.key for p in plan}):
        prompt, max_tokens = key
        plain = send(questions[prompt], max_tokens, False)
        streamed = send(questions[prompt], max_tokens, True) if plain.ok else plain
        for reply in (plain, streamed):
            if reply.ok:
                continue
            if reply.error_code == CONTEXT_OVERFLOW:
                skipped.append({"prompt": prompt, "max_tokens": max_tokens, "reason": reply.error})
                break
            raise RuntimeError(f"sequential reference for prompt {prompt} (max_tokens {max_tokens}) failed: "
                               f"{reply.error}; are the controller, the worker and the API server up?")
        else:
            references[key] = Reference(plain.text, streamed.text,
                                        generated_tokens(plain.usage_tokens, plain.finish_reason, max_tokens))
    return references, skipped


# ----------------------------------------------------------------------------- checks


def bad_characters(text: str) -> int:
    """Characters a clean decode of whole tokens does not give."""
    return sum(ch == "\ufffd" or (unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\t\n\r") for ch in text)


@dataclass
class Outcome:
    """A planned request, its reply and what the checks found."""

    index: int
    prompt: int
    max_tokens: int
    stream: bool
    ok: bool
    seconds: float
    ttft_s: float | None
    tokens: int | None
    finish_reason: str | None
    error: str | None = None
    problems: list[str] = field(default_factory=list)  # subset of PROBLEMS
    detail: str | None = None
    text: str | None = None  # kept only for a request with a problem


def check(planned: Planned, reply: Reply, reference: Reference | None) -> Outcome:
    out = Outcome(planned.index, planned.prompt, planned.max_tokens, planned.stream, reply.ok, reply.seconds,
                  reply.ttft_s, None, reply.finish_reason, reply.error)
    if not reply.ok:
        out.problems.append("failed")
        return out
    if not planned.stream:
        out.tokens = generated_tokens(reply.usage_tokens, reply.finish_reason, planned.max_tokens)
    if not reply.text:
        out.problems.append("empty")
    details = []
    if reply.malformed:
        details.append(reply.malformed)
    if reference is not None:
        expected = reference.answer(planned.stream)
        if bad_characters(reply.text) > bad_characters(expected):
            details.append("characters a clean decode does not give")
        if planned.stream and reply.text != final_as_streamed(reference.text):
            details.append("streamed deltas differ from the final text")
        if reply.text != expected:
            out.problems.append("mismatched")
        elif planned.stream:
            out.tokens = reference.tokens  # the same greedy answer: the same token count
    if details:
        out.problems.append("garbled")
        out.detail = "; ".join(details)
    if out.problems:
        out.text = reply.text
    return out
