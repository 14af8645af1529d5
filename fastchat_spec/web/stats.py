"""Statistics plumbing for the web UI: numbers per answer and where each token came from.

Everything here is plain Python fed with the worker's streamed chunks
(``text``, ``usage``, ``finish_reason``, ``spec`` = {steps, tokens, accepted}),
so it is unit-tested without Gradio, a browser or a model.

Provenance. Verification step ``s`` accepts ``a_s`` draft tokens, proposed at
draft depths 1..a_s, and then adds one token chosen by the base model (the
prefill is step 1 and gives one base token). Counting those through
``spec.accepted`` gives the depth of every generated token in order; the
worker's ``usage.completion_tokens`` says how many of them each chunk covers.

The worker streams text, not token ids, so text is matched to tokens in one of
two ways, chunk by chunk:

* token level, when the UI has the model's tokenizer: the chunk's text is
  re-encoded, and it is used only if the re-encoding reproduces the worker's
  token count and its decoded pieces join back to exactly the streamed text;
* step level otherwise (no tokenizer, a non-canonical tokenisation, a stop
  string that cut the text): the whole chunk is one span, shaded by the
  deepest draft depth among its tokens.

Neither way ever guesses: a chunk that cannot be split exactly stays whole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

BASE_DEPTH = 0  # "depth" of a token the base model chose itself
DECODE_CONTEXT = 4  # tokens decoded before each piece so that leading spaces come out right


# -- controls -------------------------------------------------------------------
class ControlError(ValueError):
    """A temperature, top_p or max_new_tokens value that FastChat's API would reject."""


def check_controls(temperature, top_p, max_new_tokens) -> None:
    """The rules of FastChat's OpenAI API server (``check_requests``), with its messages.

    They are restated here because importing ``fastchat.serve.openai_api_server``
    redirects this process's stdout and stderr into a log file; a test checks
    that both give the same verdicts. The UI's max_new_tokens is the API's
    ``max_tokens``, so the messages name it so.
    """
    for name, value in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_new_tokens)):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise ControlError(f"{name} is required: enter a number")
    if isinstance(max_new_tokens, float) and not max_new_tokens.is_integer():
        raise ControlError(f"{max_new_tokens} is not a whole number - 'max_tokens'")
    if max_new_tokens <= 0:
        raise ControlError(f"{max_new_tokens} is less than the minimum of 1 - 'max_tokens'")
    if temperature < 0:
        raise ControlError(f"{temperature} is less than the minimum of 0 - 'temperature'")
    if temperature > 2:
        raise ControlError(f"{temperature} is greater than the maximum of 2 - 'temperature'")
    if top_p < 0:
        raise ControlError(f"{top_p} is less than the minimum of 0 - 'top_p'")
    if top_p > 1:
        raise ControlError(f"{top_p} is greater than the maximum of 1 - 'top_p'")


# -- numbers per answer -------------------------------------------------------------
@dataclass
class AnswerStats:
    """What one streamed answer has cost so far.

    ``seconds`` is wall time from sending the request to the latest chunk, so
    tok/s is what a user experiences (prefill and HTTP included).
    """

    tokens: int = 0  # usage.completion_tokens
    seconds: float = 0.0
    first_chunk_seconds: Optional[float] = None
    steps: Optional[int] = None  # spec.steps; None when the worker sends no ``spec``
    spec_tokens: Optional[int] = None  # spec.tokens (may exceed ``tokens`` by a stop token)
    accepted: list = field(default_factory=list)
    finish_reason: Optional[str] = None

    def update(self, chunk: dict, seconds: float) -> None:
        self.seconds = seconds
        if self.first_chunk_seconds is None:
            self.first_chunk_seconds = seconds
        usage = chunk.get("usage") or {}
        self.tokens = int(usage.get("completion_tokens", self.tokens) or 0)
        self.finish_reason = chunk.get("finish_reason") or self.finish_reason
        spec = chunk.get("spec")
        if spec:
            self.steps = int(spec["steps"])
            self.spec_tokens = int(spec["tokens"])
            self.accepted = list(spec["accepted"])

    @property
    def has_spec(self) -> bool:
        return self.steps is not None

    @property
    def tok_per_s(self) -> Optional[float]:
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else None

    @property
    def tokens_per_step(self) -> Optional[float]:
        """τ: tokens generated per base forward pass (1.0 for plain autoregressive decoding)."""
        if not self.steps:
            return None
        return self.spec_tokens / self.steps

    @property
    def mean_accepted(self) -> Optional[float]:
        """Draft tokens accepted per verification step (the prefill is not one)."""
        return sum(self.accepted) / len(self.accepted) if self.accepted else None


def accepted_per_step(accepted: list) -> dict:
    """Chart columns: verification step number (the prefill is step 1) and its accepted drafts."""
    return {"step": list(range(2, len(accepted) + 2)), "accepted": [int(a) for a in accepted]}


def speedup(fast: AnswerStats, slow: AnswerStats) -> Optional[float]:
    if fast.tok_per_s is None or slow.tok_per_s is None:
        return None
    return fast.tok_per_s / slow.tok_per_s


def first_difference(a: str, b: str) -> Optional[int]:
    """Index of the first differing character, or None when the strings are equal."""
    if a == b:
        return None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


# -- provenance -------------------------------------------------------------------
def token_origins(spec: dict) -> list[tuple[int, int]]:
    """(step, depth) of every generated token in order; depth 0 is the base model's token."""
    origins = [(1, BASE_DEPTH)]  # the prefill's token
    for step, accepted in enumerate(spec.get("accepted", []), start=2):
        origins.extend((step, depth) for depth in range(1, int(accepted) + 1))
        origins.append((step, BASE_DEPTH))
    return origins


@dataclass
class Segment:
    """A piece of the answer's text and where it came from."""

    text: str
    depth: Optional[int]  # token level: the token's depth; step level: the deepest in the chunk; None: unknown
    steps: tuple  # verification steps that produced it
    level: str  # "token", "step" or "unknown"
    depths: tuple = ()  # every token's depth (step level), for the tooltip

    def describe(self) -> str:
        steps = _span(self.steps)
        if self.level == "token":
            source = "base model" if self.depth == BASE_DEPTH else f"draft depth {self.depth}, accepted"
            return f"{steps}: {source}"
        if self.level == "step":
            drafts = sum(1 for d in self.depths if d != BASE_DEPTH)
            return f"{steps}: {len(self.depths)} tokens, {drafts} of them accepted drafts (deepest depth {self.depth})"
        return "provenance unknown"


def _span(steps: tuple) -> str:
    if not steps:
        return "step ?"
    return f"step {steps[0]}" if steps[0] == steps[-1] else f"steps {steps[0]}-{steps[-1]}"


class Provenance:
    """Builds the answer's segments chunk by chunk (see the module docstring).

    ``tokenizer`` is the model's Hugging Face tokenizer or None.
    """

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.segments: list[Segment] = []
        self.text = ""
        self.tokens = 0
        self._ids: Optional[list] = [] if tokenizer is not None else None
        self.token_level_chunks = 0
        self.step_level_chunks = 0

    @property
    def level(self) -> str:
        """"token", "step", "mixed" or "none": how the shading was made, for the legend."""
        if self.token_level_chunks and self.step_level_chunks:
            return "mixed"
        if self.token_level_chunks:
            return "token"
        return "step" if self.step_level_chunks else "none"

    @property
    def max_depth(self) -> int:
        return max((s.depth for s in self.segments if s.depth is not None), default=0)

    def add(self, text: str, completion_tokens: int, spec: Optional[dict]) -> None:
        if not text.startswith(self.text):
            self._rewind(text)
        delta = text[len(self.text):]
        lo, hi = self.tokens, max(self.tokens, int(completion_tokens))
        origins = token_origins(spec)[lo:hi] if spec else []
        if delta and origins and len(origins) == hi - lo:
            self._add_chunk(text, delta, origins)
        else:
            if delta:  # no ``spec``, or counts that do not fit it: show the text unshaded
                self.segments.append(Segment(delta, None, (), "unknown"))
            if self._ids is not None:
                self._ids = self._encode(text)
        self.text, self.tokens = text, hi

    def _add_chunk(self, text: str, delta: str, origins: list) -> None:
        pieces = self._token_pieces(text, len(origins)) if self._ids is not None else None
        if pieces is not None:
            self.token_level_chunks += 1
            at = 0
            for piece, count in pieces:
                group = origins[at : at + count]
                at += count
                if piece:
                    depth = max(d for _, d in group)
                    self.segments.append(Segment(piece, depth, (group[-1][0],), "token"))
            return
        self.step_level_chunks += 1
        depths = tuple(d for _, d in origins)
        steps = tuple(sorted({s for s, _ in origins}))
        self.segments.append(Segment(delta, max(depths), steps, "step", depths))

    def _token_pieces(self, text: str, count: int) -> Optional[list]:
        """[(piece, tokens in it)] for the chunk's tokens, or None if the text cannot be split exactly."""
        previous = self._ids
        ids = self._encode(text)
        self._ids = ids
        start = len(previous)
        if ids[:start] != previous or len(ids) - start != count:
            return None
        pieces, pending = [], 0
        for k in range(start, len(ids)):
            pending += 1
            context = max(0, k - DECODE_CONTEXT)
            before, after = self._decode(ids[context:k]), self._decode(ids[context : k + 1])
            if after.startswith(before) and not after.endswith("\ufffd"):
                pieces.append((after[len(before):], pending))
                pending = 0
        if pending or "".join(p for p, _ in pieces) != text[len(self.text):]:
            return None
        return pieces

    def _encode(self, text: str) -> list:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _decode(self, ids: list) -> str:
        # The same arguments as the worker's decoder (FastChat's and ours).
        return self.tokenizer.decode(ids, skip_special_tokens=True, spaces_between_special_tokens=False,
                                     clean_up_tokenization_spaces=True)

    def _rewind(self, text: str) -> None:
        """The stream replaced text it had sent: keep the common prefix, forget token alignment."""
        keep = 0
        while keep < min(len(text), len(self.text)) and text[keep] == self.text[keep]:
            keep += 1
        kept, length = [], 0
        for seg in self.segments:
            if length + len(seg.text) > keep:
                if keep > length:
                    kept.append(Segment(seg.text[: keep - length], seg.depth, seg.steps, seg.level, seg.depths))
                break
            kept.append(seg)
            length += len(seg.text)
        self.segments, self.text = kept, text[:keep]
        if self._ids is not None:
            self._ids = self._encode(self.text)


# -- one answer -------------------------------------------------------------------
def worker_error_message(chunk: dict) -> str:
    """A worker chunk with error_code != 0, as a sentence a user can act on."""
    text = str(chunk.get("text", "")).strip()
    return f"The model worker reported error {chunk.get('error_code')}: {text or 'no details given'}"


class Answer:
    """One streamed answer: its text, numbers and provenance, or the error that ended it."""

    def __init__(self, tokenizer=None):
        self.text = ""
        self.stats = AnswerStats()
        self.provenance = Provenance(tokenizer)
        self.error: Optional[str] = None
        self.done = False

    def add(self, chunk: dict, seconds: float) -> None:
        if chunk.get("error_code", 0) != 0:
            self.fail(worker_error_message(chunk))
            return
        self.text = chunk.get("text", "")
        self.stats.update(chunk, seconds)
        self.provenance.add(self.text, self.stats.tokens, chunk.get("spec"))

    def fail(self, message: str) -> None:
        self.error, self.done = message, True

    def finish(self) -> None:
        self.done = True

    @property
    def state(self) -> str:
        if self.error:
            return "error"
        return "done" if self.done else "streaming"
