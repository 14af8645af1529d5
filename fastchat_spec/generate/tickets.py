"""A request's side of the engine loop: what it asks for (``Job``) and what it gets back (``Ticket``).

The caller's thread submits a ``Job`` and iterates its ``Ticket``: one
``Emitted`` per base forward (the prefill's token, then each step's accepted
drafts and bonus token), until the loop finishes the request or fails it.
Cancelling the ticket (a client gone, a stop string found) makes the loop
free the request's slot at its next step boundary.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from fastchat_spec.generate.sampling import SamplingParams


@dataclass
class Job:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop_token_ids: list[int] = field(default_factory=list)
    acceptance: str = "lossless"
    options: dict = field(default_factory=dict)
    # The reader wants only the finished answer (FastChat's non-streamed requests without stop strings):
    # the steps are handed over all at once when the request ends, so its thread wakes once, not per step.
    at_end: bool = False
    # The base's log-probability of every emitted token (and, with ``prompt_logprobs``, of the prompt's
    # tokens after its first), as FastChat's ``logprobs``; such a request is stepped by the host.
    logprobs: bool = False
    prompt_logprobs: bool = False


@dataclass
class Emitted:
    tokens: list[int]  # tokens of one step (the prefill's first token, or accepted drafts + bonus)
    prefill: bool = False
    logprobs: Optional[list[float]] = None  # one per token, when the job asked for them
    prompt_logprobs: Optional[list[float]] = None  # the prefill's: the prompt's tokens after the first


class Ticket:
    """One request's side of the loop: the events its steps produce, and its cancellation."""

    def __init__(self, job: Job):
        self.job = job
        self.events: queue.Queue = queue.Queue()
        self._held: list[Emitted] = []  # steps kept back until the end (``Job.at_end``)
        self._cancelled = threading.Event()
        self._finished = threading.Event()

    def cancel(self) -> None:
        """Leave the batch at the next step boundary (safe to call at any time, twice)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, tokens: list[int], prefill: bool = False, logprobs: Optional[list[float]] = None,
             prompt_logprobs: Optional[list[float]] = None) -> None:
        event = Emitted(tokens, prefill, logprobs, prompt_logprobs)
        if self.job.at_end:
            self._held.append(event)
        else:
            self.events.put(event)

    def finish(self, error: Optional[BaseException] = None) -> None:
        for event in self._held:
            self.events.put(event)
        self._held = []
        self.events.put(error if error is not None else StopIteration())
        self._finished.set()

    def steps(self, alive, poll_s: float = 1.0):
        """Yield ``Emitted`` until the loop finishes the request; raise what failed it."""
        for batch in self.batches(alive, poll_s):
            yield from batch

    def batches(self, alive, poll_s: float = 1.0, min_gap_s=lambda: 0.0):
        """Yield lists of ``Emitted``: every step the loop has handed over since the last list.

        A reader that falls behind the loop (many requests, a slow client) gets
        the steps it missed in one list, so it detokenises and yields once for
        all of them instead of once per step. ``min_gap_s()`` (asked after each
        list) makes the reader fall behind that much: it sleeps until the gap
        has passed or the request has ended, so a stream costs its thread one
        wake-up per gap rather than one per step, while its last tokens come at once.
        """
        last = None
        while True:
            gap = min_gap_s() if last is not None else 0.0
            if gap > 0:
                self._finished.wait(max(0.0, last + gap - time.monotonic()))
            try:
                event = self.events.get(timeout=poll_s)
            except queue.Empty:
                if not alive():
                    raise RuntimeError("fastchat-spec: the engine loop stopped; retry the request") from None
                continue
            batch: list[Emitted] = []
            while isinstance(event, Emitted):
                batch.append(event)
                try:
                    event = self.events.get_nowait()
                except queue.Empty:
                    event = None
            if batch:
                last = time.monotonic()
                yield batch
            if isinstance(event, StopIteration):
                return
            if isinstance(event, BaseException):
                raise event
