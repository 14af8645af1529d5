"""``generate_stream`` with the signature and contract of FastChat's own.

It yields dicts with cumulative ``text`` that only grows, ``usage``,
``finish_reason`` and ``logprobs`` (None unless the request sets it;
``logprobs.py``), plus ``spec``: the
verification steps and tokens so far, and the draft tokens accepted per step.
Passing ``"spec_disable": true`` in the request runs FastChat's stock decoder
on the same base model (used by the side-by-side view).

The request itself is decoded by the model's engine loop (``generate/loop.py``),
batched with every other request in flight; this function validates it,
submits it, and turns the loop's tokens into FastChat's chunks in the calling
thread. Detokenisation is incremental: each step decodes only its new tokens
and a few before them (``IncrementalText``), so streaming costs O(new tokens).
"""
from __future__ import annotations

import bisect
import os

from fastchat_spec.generate.logprobs import AnswerLogprobs
from fastchat_spec.generate.loop import engine_for
from fastchat_spec.generate.tickets import Job
from fastchat_spec.generate.request import Request, parse_request
from fastchat_spec.spec_model import split_base
from fastchat_spec.spec_stats import SpecStats

# A stream interval no answer reaches: only the last chunk is yielded (the worker's non-streamed answer).
LAST_CHUNK_ONLY = 1 << 62
STREAM_GAP_ENV = "FASTCHAT_SPEC_STREAM_GAP_MS"  # least time between a stream's chunks (0: a chunk per step)
# Each chunk costs the worker a thread wake-up, a decode, FastChat's JSON and an event-loop write,
# all under the GIL that the engine loop needs to launch every step: at a chunk per step, 16 streams
# starved the loop. 20 ms (50 chunks a second) is below what a reader sees (BENCHMARKS.md section 7).
# It applies only while the loop serves more than one request: alone, a stream gets every step.
DEFAULT_STREAM_GAP_MS = 20


def stream_gap_s() -> float:
    """Seconds a streamed request waits between chunks under load, gathering the steps that arrive meanwhile."""
    value = os.environ.get(STREAM_GAP_ENV, str(DEFAULT_STREAM_GAP_MS))
    try:
        return max(0.0, float(value)) / 1000
    except ValueError:
        raise ValueError(f"{STREAM_GAP_ENV} must be a number of milliseconds, got {value!r}") from None


def generate_stream(model, tokenizer, params: dict, device: str, context_len: int,
                    stream_interval: int = 2, judge_sent_end: bool = False):
    # FastChat's CLI --judge-sent-end: at a stop token that ends no sentence, FastChat's decoder takes
    # its second choice instead and decodes the whole answer again. That decoder serves such a request,
    # and every request to a base split over devices (``spec_model.split_base``; said at load).
    if params.get("spec_disable") or judge_sent_end or split_base(model):
        # FastChat's decoder looks for stop strings only when it yields: keep its own default interval.
        stream_interval = 2 if stream_interval >= LAST_CHUNK_ONLY else stream_interval
        yield from _stock_stream(model, tokenizer, params, device, context_len, stream_interval, judge_sent_end)
        return
    request = parse_request(params, tokenizer, context_len)
    stream_interval = max(1, int(stream_interval))
    # An interval past the answer's length asks for the last chunk alone (the worker's non-streamed
    # /worker_generate does): without stop strings to watch for, no step needs decoding before the end.
    at_end = stream_interval > request.max_new_tokens and not request.stop_strings
    loop = engine_for(model, context_len)
    ticket = loop.submit(Job(request.prompt_ids, request.max_new_tokens, request.sampling,
                             request.stop_token_ids, request.acceptance, request.options, at_end=at_end,
                             logprobs=request.logprobs, prompt_logprobs=request.logprobs and request.echo))
    try:
        pacing = ChunkPacing(0.0 if at_end else stream_gap_s(), busy=lambda: loop.busy_slots() > 1)
        yield from _stream(ticket.batches(loop.alive, min_gap_s=pacing), tokenizer, request, stream_interval,
                           at_end, pacing)
    finally:
        ticket.cancel()  # a finished request is already out; a client gone frees its slot


class ChunkPacing:
    """How long a stream's reader lets steps gather before it reads again (``Ticket.batches``' ``min_gap_s``).

    Under load (``busy()``), ``gap_s`` once the stream has sent its first chunk; none before, so the
    first text goes out at the step that makes it (the prefill's token alone is below FastChat's
    stream interval of 2, and a gap counted from reading it delayed the first text by the whole gap).
    """

    def __init__(self, gap_s: float, busy):
        self.gap_s = gap_s
        self.busy = busy
        self.sent = False  # the stream has sent a chunk

    def __call__(self) -> float:
        return self.gap_s if self.sent and self.busy() else 0.0


def _stream(batches, tokenizer, request: Request, stream_interval: int, at_end: bool = False,
            pacing: ChunkPacing | None = None):
    """FastChat's chunks from the loop's steps, read a batch at a time (what arrived since the last read).

    ``at_end``: only the last chunk is wanted and no stop string can end the answer early, so the
    text is decoded once, at the end. ``pacing`` learns when the first chunk is sent.
    """
    prompt_len = len(request.prompt_ids)
    text = IncrementalText(tokenizer, request)
    logprobs = AnswerLogprobs(tokenizer, request.prompt_ids, request.echo) if request.logprobs else None
    stats = SpecStats()
    starts: list[int] = []  # where each step's tokens begin in ``generated``
    generated: list[int] = []
    finish_reason = None
    counted = 0  # tokens that count as completion tokens
    last_yield_at = 0
    for batch in batches:
        before = len(generated)
        for step in batch:
            starts.append(len(generated))
            stats.record(len(step.tokens), step.prefill)
            counted, finish_reason = _take(step.tokens, generated, counted, request)
            if logprobs is not None:
                logprobs.add_prompt(step.prompt_logprobs)
                logprobs.extend(generated[starts[-1]:], step.logprobs)
            if finish_reason:
                break
        if not at_end:
            text.extend(generated[before:])
        if text.hit_stop:
            finish_reason = "stop"
            # The stop may end in ids held back from the text before this batch (split UTF-8).
            counted = text.tokens_before_stop(generated, max(0, before - text.held))
            stats = stats.first_steps(bisect.bisect_right(starts, counted))  # up to the step holding the stop
        if finish_reason:
            break
        if not at_end and counted - last_yield_at >= stream_interval and text.can_yield():
            last_yield_at = counted
            if pacing is not None:
                pacing.sent = True
            yield _chunk(text.shown, prompt_len, counted, None, stats,
                         logprobs.as_dict(len(generated)) if logprobs else None)
    if finish_reason is None:  # the loop ended the request first (a stop id it saw, or max_new_tokens)
        finish_reason = "length" if counted >= request.max_new_tokens else "stop"
    # After a stop string, the logprobs end with the token that completed it.
    logged = min(len(generated), counted + 1) if text.hit_stop else len(generated)
    yield _chunk(text.final(generated), prompt_len, counted, finish_reason, stats,
                 logprobs.as_dict(logged) if logprobs else None)


def _take(tokens: list[int], generated: list[int], counted: int, request: Request):
    """Append one step's tokens up to a stop id or max_new_tokens: (completion tokens, finish reason or None)."""
    for token in tokens:
        generated.append(token)
        if token in request.stop_token_ids:
            return counted, "stop"
        counted += 1
        if counted >= request.max_new_tokens:
            return counted, "length"
    return counted, None


class IncrementalText:
    """Cumulative text of the answer and stop-string handling, as FastChat computes them.

    FastChat decodes every id at every step (O(n) per step). Here each step
    decodes a short window: the ids since ``prefix`` with the new ones, and
    appends what they add to the window's text before them (a SentencePiece
    piece's leading space depends on the piece before it, hence the window).
    The window's start moves only now and then, so the text before the new ids
    is the last step's, already decoded. Special ids are dropped once up front
    (a slow tokenizer otherwise rebuilds its special-token lists per id), and a
    slow SentencePiece tokenizer's windows are decoded by SentencePiece itself
    (``window_decoder``). The final text is one full decode, exactly FastChat's.
    """

    CONTEXT = 4  # ids kept before the new ones as decoding context when the window moves
    MAX_WINDOW = 12  # ids in the window before it moves

    def __init__(self, tokenizer, request: Request):
        self.tokenizer = tokenizer
        self.request = request
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.ids: list[int] = [i for i in request.prompt_ids if i not in self.special] if request.echo else []
        self.text = self._decode(self.ids)
        self.search_from = len(request.prompt) if request.echo else 0
        self.prefix = max(0, len(self.ids) - self.CONTEXT)  # window start
        self.read = len(self.ids)  # ids already turned into ``text``
        self.window = window_decoder(tokenizer) or self._decode
        self.whole = whole_decoder(tokenizer) or self._decode
        self.window_text = self.window(self.ids[self.prefix :])  # decode(ids[prefix:read])
        self.hit_stop = False
        self.held = 0
        self.partial = False
        self.shown = ""  # the text as the client has it
        self.last_yielded = ""

    def _decode(self, ids: list[int]) -> str:
        return tokenizer_decode(self.tokenizer, ids)

    def extend(self, new_ids: list[int]) -> None:
        checked = len(self.text)  # text already searched for stop strings
        self.held = len(self.ids) - self.read  # earlier ids not yet in ``text`` (a character split across ids)
        self.ids.extend(i for i in new_ids if i not in self.special)
        if len(self.ids) > self.read:
            after = self.window(self.ids[self.prefix :])
            if len(after) > len(self.window_text) and not after.endswith("\ufffd"):  # wait out split UTF-8
                self.text += after[len(self.window_text) :]
                self.read = len(self.ids)
                self.window_text = after
                if self.read - self.prefix > self.MAX_WINDOW:
                    self.prefix = self.read - self.CONTEXT
                    self.window_text = self.window(self.ids[self.prefix :])
        self._find_stop(checked)

    def _find_stop(self, checked: int) -> None:
        """Stop strings in the new text only (with the overlap a stop can span): O(new text) per step."""
        from fastchat.utils import is_partial_stop

        self.partial = False
        self.shown = self.text
        for stop in self.request.stop_strings:
            pos = self.text.find(stop, max(self.search_from, checked - len(stop) + 1))
            if pos != -1:
                self.hit_stop = True
                self.shown = self.text[:pos]
                return
            # Only the last len(stop) characters can start a stop string cut at the end of the text.
            self.partial = self.partial or is_partial_stop(self.text[-len(stop):], stop)

    def can_yield(self) -> bool:
        """Yield only text that extends what was yielded (clients compute deltas)."""
        text = self.shown
        if self.partial or text.endswith("\ufffd") or not text.startswith(self.last_yielded):
            return False
        self.last_yielded = text
        return True

    def tokens_before_stop(self, generated: list[int], checked: int) -> int:
        """Tokens before the one that completed a stop string (it is not counted, like a stop id).

        A step can accept several tokens past the stop; usage must not depend on the drafter.
        """
        for k in range(checked + 1, len(generated) + 1):
            if self._stop_position(self._full(generated[:k])) != -1:
                return k - 1
        return len(generated)

    def final(self, generated: list[int]) -> str:
        """The last chunk's text: one full decode, cut at the first stop string."""
        text = self._full(generated)
        pos = self._stop_position(text)
        return text if pos == -1 else text[:pos]

    def _full(self, generated: list[int]) -> str:
        """FastChat's own decode of the whole answer (and the prompt, with echo).

        A slow tokenizer skipping special tokens rebuilds its special-token list for every id (2.6 ms
        for 253 ids, against 0.9 ms with the special ones dropped up front: scripts/detok_bench.py), so the
        special ids are dropped here, as the stream's windows do, and a slow Llama tokenizer's own steps
        run without their per-piece look-ups (``whole_decoder``). A fast tokenizer skips them itself.
        """
        ids = (list(self.request.prompt_ids) if self.request.echo else []) + list(generated)
        if getattr(self.tokenizer, "is_fast", False):
            return self.tokenizer.decode(ids, skip_special_tokens=True, spaces_between_special_tokens=False,
                                         clean_up_tokenization_spaces=True)
        return self.whole([i for i in ids if i not in self.special])

    def _stop_position(self, text: str) -> int:
        found = [p for p in (text.find(s, self.search_from) for s in self.request.stop_strings) if p != -1]
        return min(found) if found else -1


def tokenizer_decode(tokenizer, ids: list[int]) -> str:
    """The tokenizer's own decode as FastChat calls it, on ids whose special ones were dropped (the
    same text as skip_special_tokens=True)."""
    return tokenizer.decode(ids, skip_special_tokens=False, spaces_between_special_tokens=False,
                            clean_up_tokenization_spaces=True)


def _sentencepiece(tokenizer):
    """(SentencePiece model, whether it owns every id of a list) of a slow SentencePiece tokenizer, or None.

    An id past SentencePiece's pieces, or one of the tokenizer's added tokens, is not SentencePiece's.
    """
    sp = getattr(tokenizer, "sp_model", None)
    if getattr(tokenizer, "is_fast", True) or not hasattr(sp, "decode") or not hasattr(sp, "get_piece_size"):
        return None
    size = sp.get_piece_size()
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return sp, lambda ids: all(i < size and i not in added for i in ids)


def window_decoder(tokenizer):
    """A faster exact window decode for a slow SentencePiece tokenizer (Llama's, Vicuna's), or None.

    Such a tokenizer's ``decode`` turns ids into pieces, checks every piece
    against its special-token lists (rebuilt per call), hands the pieces to
    SentencePiece and cleans up spaces: 20x the cost of SentencePiece's own
    decode on a 12-id window. Only the first piece's leading space is handled
    differently, and the stream uses differences between two decodes of
    windows that start at the same id, where that cancels out. A window with
    an id SentencePiece does not own (an added token) goes the tokenizer's way.
    """
    found = _sentencepiece(tokenizer)
    if found is None:
        return None
    sp, owns = found

    def decode(ids: list[int]) -> str:
        if not owns(ids):
            return tokenizer_decode(tokenizer, ids)
        return tokenizer.clean_up_tokenization(sp.decode(ids))  # the stream decodes with clean-up on

    return decode


def whole_decoder(tokenizer):
    """The slow Llama tokenizer's own decode of ids without special ones, minus its look-ups; or None.

    ``LlamaTokenizer.decode`` turns ids into pieces, checks each piece
    against its special-token list (rebuilt for every piece: most of the
    final decode's cost), strips the first piece's prefix space, hands the
    pieces to SentencePiece and cleans up spaces. Without special ids no
    piece is a special token (SentencePiece's pieces are unique, and a
    special token's piece has its special id), so the check is always false
    and is skipped; every other step is the tokenizer's own, in its order.
    Only for tokenizers that use Llama's and the slow base class's methods
    unchanged; ids of added tokens go the tokenizer's way.
    """
    try:
        from transformers import LlamaTokenizer
        from transformers.tokenization_utils import PreTrainedTokenizer
    except ImportError:  # a transformers without the slow Llama tokenizer (no sentencepiece)
        return None
    cls = type(tokenizer)
    found = _sentencepiece(tokenizer)
    if found is None or not isinstance(tokenizer, LlamaTokenizer) or any(
            getattr(cls, name) is not getattr(owner, name) for owner, name in (
                (LlamaTokenizer, "convert_tokens_to_string"), (LlamaTokenizer, "_convert_id_to_token"),
                (PreTrainedTokenizer, "convert_ids_to_tokens"), (PreTrainedTokenizer, "_decode"))):
        return None
    sp, owns = found

    def decode(ids: list[int]) -> str:
        if not ids or not owns(ids):
            return tokenizer_decode(tokenizer, ids)
        pieces = [sp.IdToPiece(i) for i in ids]
        if pieces[0].startswith("\u2581") and tokenizer.add_prefix_space:  # SentencePiece's word boundary
            pieces[0] = pieces[0][1:]
        return tokenizer.clean_up_tokenization(sp.decode(pieces))

    return decode


def _chunk(text: str, prompt_len: int, completion: int, finish_reason, stats: SpecStats,
           logprobs: dict | None = None) -> dict:
    return {
        "text": text,
        "logprobs": logprobs,
        "usage": {
            "prompt_tokens": prompt_len,
            "completion_tokens": completion,
            "total_tokens": prompt_len + completion,
        },
        "finish_reason": finish_reason,
        # Engine counts: a last step may accept tokens past max_new_tokens or a stop (usage excludes them).
        "spec": stats.as_dict(),
    }


def _stock_stream(model, tokenizer, params, device, context_len, stream_interval, judge_sent_end):
    """FastChat's own decoder on the base model, with the same ``spec`` field (one token per step)."""
    from fastchat.serve.inference import generate_stream as fastchat_generate_stream

    request = parse_request(params, tokenizer, context_len)  # same validation and messages as the fast path
    base = getattr(model, "base", model)
    stock_params = {k: v for k, v in params.items() if not k.startswith("spec_")}
    if not request.logprobs:  # FastChat would take ``"logprobs": false`` as asking for them
        stock_params.pop("logprobs", None)
    if stock_params.get("stop_token_ids") is not None:
        stock_params["stop_token_ids"] = list(stock_params["stop_token_ids"])
    for out in fastchat_generate_stream(base, tokenizer, stock_params, device, context_len,
                                        stream_interval, judge_sent_end):
        n = out["usage"]["completion_tokens"]
        out["spec"] = SpecStats.one_token_steps(n).as_dict()
        yield out
