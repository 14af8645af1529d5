"""One engine loop per loaded model: a single thread owns the device and batches every request.

FastChat's worker calls ``generate_stream`` from many threads at once. Each
call submits a ``Job`` here and reads its own ``Ticket``; the loop thread
admits jobs (prefill into a free KV slot), then runs one batched speculative
step over every active request, greedy or sampled (``batch_step.BatchStep``), and hands
each ticket the tokens its row emitted. It launches the next step before it
hands out the last one (``FASTCHAT_SPEC_STEPS_AHEAD``: two steps, or one), so
the device works while the host does. An admission does not wait for the
prompt's forward either: the prompt's first token is handed out with the
request's first step (``_Row.first_pending``). Requests join at prefill and leave at
any step boundary: finished, stopped, cancelled or abandoned by their client.

Requests whose step needs the host (repetition penalty, typical acceptance,
Jacobi windows, logprobs) run through the same loop with their own cache, one
host step each per iteration, between the batched steps.

Graphs (every batched step shape, and the prompt prefill per length bucket,
``prefill.py``) are captured at warm-up only: at worker load, or by this
thread before it admits its first request; never while serving. With
``FASTCHAT_SPEC_BATCH_INVARIANT=1`` every row runs alone at a fixed shape, so a
request's numerics do not depend on what else is being served (slower).

(About 550 lines: admission, stepping, the step shapes and the per-model
registry of loops are one scheduler's state and stay together; the request
side is ``tickets.py``, the prompt forward ``prefill.py``.)
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
from fastchat.constants import ErrorCode

from fastchat_spec.generate.batch_step import (BatchStep, LaunchedStep, SlotState, StepReports, emitted_tokens,
                                               root_token, sampled_steps_enabled, supports_device_step)
from fastchat_spec.generate.cuda_graphs import capture, compiled_decoder, graphs_enabled
from fastchat_spec.generate.engine import Generation
from fastchat_spec.generate.kv_cache import round_up
from fastchat_spec.generate.prefill import SlotPrefill
from fastchat_spec.generate.row_sampling import first_token
from fastchat_spec.generate.proposers import Committed, proposer_class
from fastchat_spec.generate.proposers.base import SlotProposers
from fastchat_spec.generate.request import RequestError
from fastchat_spec.generate.slots import SlotStore
from fastchat_spec.generate.tickets import Job, Ticket
from fastchat_spec.generate.verify import compute_dtype, eager_attention

log = logging.getLogger("fastchat_spec.loop")

MAX_BATCH_ENV = "FASTCHAT_SPEC_MAX_BATCH"  # slots per loaded model (default: the worker's concurrency limit)
INVARIANT_ENV = "FASTCHAT_SPEC_BATCH_INVARIANT"  # 1: each row steps alone (numerics independent of load)
STEP_TOKENS_ENV = "FASTCHAT_SPEC_STEP_TOKENS"  # tree nodes one batched step verifies over all its rows; 0: no cap
DEFAULT_STEP_TOKENS = 512
AHEAD_ENV = "FASTCHAT_SPEC_STEPS_AHEAD"  # batched steps launched before the host hands out a step's tokens
DEFAULT_AHEAD, MAX_AHEAD = 2, 2
DEFAULT_SLOTS = 16
IDLE_EXIT_S = 60.0  # an idle loop thread ends; the next request starts it again
WAIT_FACTOR = 4  # jobs that may wait for a slot, per slot, before new ones are refused


@dataclass
class _Row:
    """An active request in a KV slot, driven by the batched greedy step."""

    ticket: Ticket
    slot: int
    cached: int  # tokens in the slot's cache
    emitted: int = 0

    @property
    def first_pending(self) -> bool:
        """The prefill's token is still on the device: the row's first step report brings it."""
        return self.emitted == 0


@dataclass
class _InFlight:
    """A batched step launched on the device and not yet handed out: the rows it ran for."""

    first: int  # the step's rows are slots first, first+1, ...
    rows: dict[int, _Row]  # slot -> the request it held at launch
    report: LaunchedStep
    nodes: int  # tree nodes each row verified


@dataclass
class _HostRow:
    """An active request whose step needs the host (its own cache, one step per loop iteration)."""

    ticket: Ticket
    generation: Generation
    emitted: int = 0


@dataclass
class LoopStats:
    """Counters for the benchmark and for tests (slots in use, steps and rows per step)."""

    steps: int = 0
    rows: int = 0  # sum over batched steps of the rows that held a request
    max_rows: int = 0  # most requests that shared one batched step
    nodes: int = 0  # sum over batched steps of the tree nodes each row verified
    tokens: int = 0  # tokens batched steps handed to requests (accepted drafts and bonus tokens)
    seconds: float = 0.0  # device time of batched steps (CUDA events; on the CPU, host time)
    # Wall time of admissions. A host-stepped request's prefill runs in it; a batched one's is only launched
    # there (its forward runs on the device beside the steps, and the first step brings its token).
    prefill_seconds: float = 0.0
    host_seconds: float = 0.0  # wall time of host steps (sampling, repetition penalty, Jacobi)
    admitted: int = 0
    refused: int = 0

    def as_dict(self) -> dict:
        return {"steps": self.steps, "rows": self.rows, "max_rows": self.max_rows, "nodes": self.nodes,
                "tokens": self.tokens, "seconds": self.seconds,
                "prefill_seconds": self.prefill_seconds, "host_seconds": self.host_seconds,
                "admitted": self.admitted, "refused": self.refused}


class EngineLoop:
    def __init__(self, model, context_len: int, slots: int, method: Optional[str] = None):
        self.model_ref = weakref.ref(model)
        self.base = model.base
        self.device = model.device
        self.method = method or model.spec.method
        self.context_len = context_len
        cls = proposer_class(self.method)
        self.batched = getattr(cls, "device_state", False)
        self.slots = max(1, slots)
        self.invariant = os.environ.get(INVARIANT_ENV, "0") == "1"
        self.step_tokens = step_tokens()
        self.ahead = steps_ahead()
        self.graphs = graphs_enabled(self.device)
        self.sampled_steps = sampled_steps_enabled()  # sampled requests in the batched step (else a host step)
        self.stats = LoopStats()
        self.inbox: "queue.Queue[Ticket]" = queue.Queue()
        self.waiting: collections.deque[Ticket] = collections.deque()
        self.rows: dict[int, _Row] = {}
        self.host_rows: list[_HostRow] = []
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._steps: dict[tuple[int, int, int, bool], object] = {}
        self._pool = None
        self._captured: list[BatchStep] = []
        self._warm = False
        self._stopping = threading.Event()
        # Steps launched and not yet handed out, oldest first: the device runs them while the host reads.
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        if self.batched:
            tree = cls.tree_for(model)
            self.capacity = round_up(context_len + self._room_past_end(tree), 64)
            self.store, self.proposers = self._allocate_slots(model, cls)
            self.tree = self.proposers.tree
            self.state = SlotState(self.slots, self.tree.max_depth, self.device)
            self.decoder = compiled_decoder(self.base)
            self.dtype = compute_dtype(self.base)
            self.prefill = SlotPrefill(self.base, self.store, self.device, self.decoder)
            self.reports = StepReports(self.state, self.device, unread=self.ahead + 1)

    def _allocate_slots(self, model, cls) -> tuple[SlotStore, SlotProposers]:
        """KV rows and drafter state (the proposers' own caches) for every slot; with too little device memory,
        fewer slots (the rest of a burst waits)."""
        while True:
            try:
                store = SlotStore(self.base.config, self.slots, self.capacity, self.device, model.dtype)
                return store, cls.for_slots(model, self.device, self.slots, self.capacity)
            except torch.cuda.OutOfMemoryError:
                store = None  # let the KV rows go before the smaller try
                if self.slots == 1:
                    raise
                self.slots //= 2
                log.warning("not enough device memory for the KV slots and drafter state: serving %d requests at "
                            "a time", self.slots)

    # -- the callers' side -------------------------------------------------
    def submit(self, job: Job) -> Ticket:
        ticket = Ticket(job)
        with self._lock:
            self.inbox.put(ticket)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="fastchat-spec-engine", daemon=True)
                with _LOOPS_LOCK:
                    _STARTED.add(self)
                self._thread.start()
        return ticket

    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def busy_slots(self) -> int:
        return len(self.rows) + len(self.host_rows)

    def status(self) -> dict:
        """What the worker reports next to FastChat's queue length."""
        return {"method": self.method, "slots": self.slots, "busy_slots": self.busy_slots(),
                "waiting": len(self.waiting) + self.inbox.qsize(), **self.stats.as_dict()}

    def warm_up(self) -> None:
        """Capture every batched step shape now, while no slot holds a request.

        A capture's warm-up runs really step the slots' state, so it must only
        ever see empty slots: the worker calls this at load, and the loop
        thread before it admits its first request.
        """
        if not (self.batched and self.graphs) or self._warm:
            return
        if self.rows:
            raise RuntimeError("fastchat-spec: graphs are captured only while no request is in flight")
        with torch.inference_mode():
            shapes = self._all_shapes()
            for shape in (s for s in shapes if not s[-1]):
                self._steps[shape] = self._capture(*shape)
            self.prefill.capture_all()
            self._capture_sampled([s for s in shapes if s[-1]])
        self._warm = True

    def _capture_sampled(self, shapes) -> None:
        """The sampled variants; if one fails to capture, sampled requests take host steps and the greedy graphs
        serve on."""
        try:
            for shape in shapes:
                self._steps[shape] = self._capture(*shape)
        except Exception:  # noqa: BLE001 - the greedy steps are captured; sampling still has the host step
            log.exception("capturing the sampled step failed; sampled requests take host steps")
            self.sampled_steps = False
            self._steps = {shape: step for shape, step in self._steps.items() if not shape[-1]}

    # -- the loop thread ------------------------------------------------------
    def _serve(self) -> None:
        idle_since = time.monotonic()
        try:
            self.warm_up()
        except Exception as error:  # noqa: BLE001 - steps then run eagerly; requests still get answers
            log.exception("graph capture failed; batched steps run without graphs")
            self.graphs = False
            self._fail_all(error)
        while not self._stopping.is_set():
            try:
                busy = self.busy_slots() or self.waiting or self._in_flight
                block = not busy
                if not self._take_inbox(block=block, timeout=1.0):
                    if not busy:
                        with self._lock:
                            if self.inbox.empty() and time.monotonic() - idle_since > IDLE_EXIT_S:
                                self._thread = None
                                return
                        continue
                idle_since = time.monotonic()
                with torch.inference_mode():
                    self._drop_cancelled()
                    self._admit()
                    self._step_rows()
                    self._step_host_rows()
            except Exception as error:  # noqa: BLE001 - every request in flight gets the error; the loop goes on
                log.exception("engine loop step failed")
                self._fail_all(error)
        self._fail_all(RuntimeError("fastchat-spec: the process is exiting"))

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop thread (at interpreter exit: a thread that owns the device must not be killed mid-step)."""
        self._stopping.set()
        self.inbox.put(None)  # wakes an idle loop at once
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _take_inbox(self, block: bool, timeout: float) -> bool:
        try:
            ticket = self.inbox.get(block=block, timeout=timeout if block else None)
        except queue.Empty:
            return False
        tickets = [ticket]
        while True:
            try:
                tickets.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        self.waiting.extend(t for t in tickets if t is not None)  # None: stop() waking the loop
        return bool(self.waiting)

    def _drop_cancelled(self) -> None:
        for slot, row in list(self.rows.items()):
            if row.ticket.cancelled:
                self._free(slot)
                row.ticket.finish()
        for row in [r for r in self.host_rows if r.ticket.cancelled]:
            self._free_host(row)
            row.ticket.finish()
        for ticket in [t for t in self.waiting if t.cancelled]:
            self.waiting.remove(ticket)
            ticket.finish()

    def _admit(self) -> None:
        while self.waiting:
            if self.busy_slots() >= self.slots:
                self._refuse_overflow()
                return
            ticket = self.waiting.popleft()
            t0 = time.perf_counter()
            try:
                self._start(ticket)
                self.stats.admitted += 1
                self.stats.prefill_seconds += time.perf_counter() - t0
            except Exception as error:  # noqa: BLE001 - this request fails, the others go on
                log.warning("request failed at prefill: %s", error)
                ticket.finish(error)

    def _refuse_overflow(self) -> None:
        limit = WAIT_FACTOR * self.slots
        while len(self.waiting) > limit:
            ticket = self.waiting.pop()
            self.stats.refused += 1
            ticket.finish(RequestError(
                f"fastchat-spec: {len(self.waiting)} requests already wait for one of {self.slots} slots; "
                f"retry later or raise --limit-worker-concurrency / {MAX_BATCH_ENV}", ErrorCode.ENGINE_OVERLOADED))

    def _start(self, ticket: Ticket) -> None:
        job = ticket.job
        proposer_cls = proposer_class(self.method)
        # The batched step reports tokens only: a request for their logprobs reads the logits on the host.
        if (self.batched and not job.logprobs
                and supports_device_step(proposer_cls, job.sampling, job.acceptance, self.sampled_steps)):
            self._prefill_slot(ticket)
            return
        generation = Generation(self.model_ref(), job.prompt_ids, job.max_new_tokens, job.sampling,
                                acceptance=job.acceptance, options=job.options, method=self.method,
                                logprobs=job.logprobs, prompt_logprobs=job.prompt_logprobs)
        row = _HostRow(ticket, generation)
        self.host_rows.append(row)
        self._emit(row, generation.prefill(), prefill=True, logprobs=generation.step_logprobs,
                   prompt_logprobs=generation.prompt_logprobs)

    def _prefill_slot(self, ticket: Ticket) -> None:
        job = ticket.job
        p = len(job.prompt_ids)
        if p + job.max_new_tokens + self._room_past_end(self.tree) > self.capacity:
            raise ValueError(f"the prompt ({p} tokens) and max_new_tokens ({job.max_new_tokens}) do not fit "
                             f"the model's context of {self.context_len} tokens")
        slot = min(set(range(self.slots)) - set(self.rows))
        self.occupy_slot(slot, job.prompt_ids, job.sampling)
        self.rows[slot] = _Row(ticket, slot, cached=p)

    def occupy_slot(self, slot: int, prompt_ids: list[int], sampling=None) -> None:
        """Prefill ``slot`` with a prompt and set its drafter and step state, without waiting for the device.

        The first token stays on the device as the slot's root; the row's first
        step reports it (``root_token``), so the host never waits for a prompt's
        forward while the steps in flight need launching.
        """
        # Eager forwards here run at the prompt's own length (a proposer's layers, a prompt past the graphed
        # buckets): no cuDNN plan per length. The graphed buckets replay what was captured at load.
        with eager_attention():
            done = self.prefill(slot, prompt_ids)
            self.proposers.reset(slot, Committed.prompt(done.tokens, done.hidden, None))
        self.state.occupy(slot, len(prompt_ids), first_token(done, sampling), sampling)

    def _step_rows(self) -> None:
        """Launch the next batched step, then hand out older steps' tokens while the device runs it.

        ``ahead`` steps (``FASTCHAT_SPEC_STEPS_AHEAD``, default 2) stay in
        flight while the host hands out the oldest, so each request runs that
        many steps past its end (a stop token, or max_new_tokens) before the
        host knows it ended; one more when its prompt's first token ends it,
        since that token comes with its first step. Those steps are harmless:
        they write only into the request's own slot, within the room admission
        reserved (``_room_past_end``), and their tokens are dropped.
        """
        if self.invariant:
            self._step_each_alone()
            return
        if self.rows:
            count = self._rows_bucket(max(self.rows) + 1)
            # A row may be ``ahead`` unread steps (a path and its bonus each) further along than ``cached`` says.
            longest = max(r.cached for r in self.rows.values()) + self.ahead * (self.tree.max_depth + 1)
            self._in_flight.append(self._launch(0, count, self._length_bucket(longest)))
        keep = self.ahead if self.rows else 0
        while len(self._in_flight) > keep:
            self._hand_out(self._in_flight.popleft())

    def _step_each_alone(self) -> None:
        """Batch-invariant mode: every row steps alone at one fixed shape, read before the next."""
        for slot in sorted(self.rows):
            self._hand_out(self._launch(slot, 1, self.capacity))

    def _launch(self, first: int, count: int, length: int) -> _InFlight:
        rows = {slot: row for slot, row in self.rows.items() if first <= slot < first + count}
        sampled = any(not row.ticket.job.sampling.greedy for row in rows.values())
        report = self.reports.launch(self._step_for(first, count, length, sampled), slice(first, first + count))
        return _InFlight(first, rows, report, self._nodes_per_row(count))

    def _hand_out(self, flight: _InFlight) -> None:
        """Give each request of a finished step its tokens; rows that ended since its launch get none."""
        reports = flight.report.read()
        live = {slot: row for slot, row in flight.rows.items() if self.rows.get(slot) is row}
        self.stats.steps += 1
        self.stats.rows += len(live)
        self.stats.max_rows = max(self.stats.max_rows, len(live))
        self.stats.nodes += flight.nodes
        self.stats.seconds += flight.report.seconds
        for slot, row in live.items():
            report = reports[slot - flight.first]
            if row.first_pending:
                self._emit(row, [root_token(report)], prefill=True)
                if self.rows.get(slot) is not row:  # the prompt's first token ended it
                    continue
            tokens = emitted_tokens(report)
            row.cached += len(tokens)
            self.stats.tokens += len(tokens)
            self._emit(row, tokens)

    def _step_host_rows(self) -> None:
        t0 = time.perf_counter()
        for row in list(self.host_rows):
            try:
                self._emit(row, row.generation.step(), logprobs=row.generation.step_logprobs)
            except Exception as error:  # noqa: BLE001 - this request fails, the others go on
                log.warning("host step failed: %s", error)
                self._free_host(row)
                row.ticket.finish(error)
        self.stats.host_seconds += time.perf_counter() - t0

    def _emit(self, row, tokens: list[int], prefill: bool = False, logprobs=None, prompt_logprobs=None) -> None:
        """Hand a step's tokens (and their logprobs, if asked for) to the request; end it at max_new_tokens or a
        stop token id."""
        job = row.ticket.job
        row.ticket.emit(tokens, prefill, logprobs, prompt_logprobs)
        row.emitted += len(tokens)
        if row.emitted >= job.max_new_tokens or any(t in job.stop_token_ids for t in tokens):
            if isinstance(row, _Row):
                self._free(row.slot)
            else:
                self._free_host(row)
            row.ticket.finish()

    def _free(self, slot: int) -> None:
        del self.rows[slot]
        self.state.free(slot)

    def _free_host(self, row: _HostRow) -> None:
        self.host_rows.remove(row)
        row.generation.close()

    def _fail_all(self, error: BaseException) -> None:
        self._in_flight.clear()
        for slot, row in list(self.rows.items()):
            self._free(slot)
            row.ticket.finish(error)
        for row in list(self.host_rows):
            self._free_host(row)
            row.ticket.finish(error)

    # -- step shapes ------------------------------------------------------------
    def _rows_bucket(self, n: int) -> int:
        """Rows a step covers: powers of two (one graph each), capped at the slot count."""
        if not self.graphs:
            return n
        size = 1
        while size < n:
            size *= 2
        return min(size, self.slots)

    def _room_past_end(self, tree) -> int:
        """Positions a request needs past its prompt and max_new_tokens: its tree, written past its last
        token, and the accepted paths (padded) of the steps it runs before the host reads that it ended
        (``ahead`` + 1 of them when its prompt's first token ended it)."""
        return tree.num_nodes + (self.ahead + 1) * (tree.max_depth + 1) + 1

    def _length_bucket(self, longest: int) -> int:
        """Positions a step attends to: past the longest request's tree and padded path."""
        need = longest + self.tree.num_nodes + self.tree.max_depth + 2
        if not self.graphs:
            return min(round_up(need, 64), self.capacity)
        size = 256
        while size < need:
            size *= 2
        return min(size, self.capacity)

    def _nodes_per_row(self, count: int) -> int:
        """Tree nodes each row of a ``count``-row step verifies: the whole tree, or its share of the cap.

        A step of few rows costs about the same as a step of one (the device
        waits on kernel launches and weight reads), so its rows verify the
        whole tree; past the cap (``FASTCHAT_SPEC_STEP_TOKENS``) the forward
        grows with every token, and each row verifies the likeliest part of
        its tree instead (``Tree.within``). Greedy output is the same either way.
        """
        whole = self.tree.num_nodes
        return whole if not self.step_tokens else max(1, min(whole, self.step_tokens // count))

    def _all_shapes(self) -> list[tuple[int, int, int, bool]]:
        """(first row, rows, length, sampled) of every step the loop may run: each graphed at load."""
        variants = (False, True) if self.sampled_steps else (False,)
        if self.invariant:
            return [(slot, 1, self.capacity, s) for slot in range(self.slots) for s in variants]
        counts = sorted({self._rows_bucket(n) for n in range(1, self.slots + 1)})
        lengths = sorted({self._length_bucket(n) for n in range(0, self.capacity + 1, 64)})
        return [(0, c, length, s) for c in counts for length in lengths for s in variants]

    def _step_for(self, first: int, count: int, length: int, sampled: bool = False):
        """The step of that shape: its graph, or (never captured while serving) an eager run."""
        shape = (first, count, length, sampled)
        step = self._steps.get(shape)
        if step is None:
            step = self._steps[shape] = self._batch_step(*shape).run
            if self.graphs:
                log.warning("no graph for rows %d..%d, length %d%s: that step runs eagerly", first, first + count,
                            length, " (sampled)" if sampled else "")
        return step

    def _capture(self, first: int, count: int, length: int, sampled: bool):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        step = self._batch_step(first, count, length, sampled)
        replay, _ = capture(step.run, self.device, pool=self._pool)
        self._captured.append(step)  # the graph reads the step's own buffers: they must outlive it
        return replay

    def _batch_step(self, first: int, count: int, length: int, sampled: bool = False) -> BatchStep:
        return BatchStep(self.base, self.store, self.state, self.proposers, first, count, length, self.decoder,
                         nodes=self._nodes_per_row(count), sampled=sampled)


_LOOPS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_LOOPS_LOCK = threading.Lock()
# Loops whose thread was started, found at exit even when their model is gone: FastChat's CLI drops
# the model (the key of _LOOPS) when its chat loop returns, while the thread may still be in a step.
# The running thread holds its loop, so a weak set loses a loop only once its thread has ended.
_STARTED: "weakref.WeakSet[EngineLoop]" = weakref.WeakSet()
_SLOTS = {"default": None}


def configure(slots: Optional[int]) -> None:
    """Set the slots of loops created from now on (the worker passes its --limit-worker-concurrency)."""
    _SLOTS["default"] = slots


def step_tokens() -> int:
    """The cap on tree nodes per batched step (``FASTCHAT_SPEC_STEP_TOKENS``; 0 or less: none)."""
    env = os.environ.get(STEP_TOKENS_ENV)
    if env is None or env.strip() == "":
        return DEFAULT_STEP_TOKENS
    try:
        return max(0, int(env))
    except ValueError:
        raise ValueError(f"{STEP_TOKENS_ENV} must be an integer (0: no cap), got {env!r}") from None


def steps_ahead() -> int:
    """Batched steps in flight while the host hands out a step (``FASTCHAT_SPEC_STEPS_AHEAD``, 0 to 2)."""
    env = os.environ.get(AHEAD_ENV, "").strip()
    try:
        ahead = int(env) if env else DEFAULT_AHEAD
    except ValueError:
        ahead = -1
    if not 0 <= ahead <= MAX_AHEAD:
        raise ValueError(f"{AHEAD_ENV} must be 0, 1 or 2 (steps launched before a step is read), got {env!r}")
    return ahead


def default_slots() -> int:
    env = os.environ.get(MAX_BATCH_ENV)
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"{MAX_BATCH_ENV} must be an integer, got {env!r}") from None
    return _SLOTS["default"] or DEFAULT_SLOTS


@atexit.register
def _stop_all_loops() -> None:
    """Loop threads are daemons; stop them before the interpreter tears torch down under them.

    A daemon thread still inside a torch op when finalization begins is ended by
    Python as it takes the GIL back (``pthread_exit``), and that unwinding through
    torch's C++ frames aborts the process ("terminate called without an active
    exception", exit status 134).
    """
    with _LOOPS_LOCK:
        loops = list(_STARTED)
    for loop in loops:
        loop.stop()


def loops_of(model) -> list[EngineLoop]:
    with _LOOPS_LOCK:
        return list(_LOOPS.get(model, {}).values())


def engine_for(model, context_len: int, method: Optional[str] = None) -> EngineLoop:
    """The loop serving ``model`` (one per model and method), created on first use."""
    method = method or model.spec.method
    with _LOOPS_LOCK:
        loops = _LOOPS.setdefault(model, {})
        loop = loops.get(method)
        if loop is None or loop.context_len != context_len:
            loop = loops[method] = EngineLoop(model, context_len, default_slots(), method)
        return loop
