"""Concurrent requests share batched speculative steps and never change each other's text.

Every request to one model goes through that model's engine loop
(``fastchat_spec/generate/loop.py``): greedy requests are verified together in
one forward per step, each in its own KV slot. These tests call our
``generate_stream`` from many threads at once, as FastChat's worker does, and
compare every text with the same request run alone.
"""
from __future__ import annotations

import threading

import pytest
from fastchat.model.model_adapter import get_generate_stream_function, load_model

from fastchat_spec.adapters.medusa import write_medusa_checkpoint
from fastchat_spec.generate.loop import MAX_BATCH_ENV, engine_for, loops_of
from fastchat_spec.generate.tree import chain
from fastchat_spec.methods import METHODS
from tests import tiny
from tests.servers import logs_on_failure, module_servers
from tests.tiny import CONTEXT
from tests.tiny import PROMPTS as TINY_PROMPTS
from tests.tiny import TINY_CHECKPOINTS

LENGTHS = [8, 40, 16, 64, 24, 48, 12, 56, 32, 20, 60, 4, 44, 28, 36, 52]  # mixed max_new_tokens
PROMPTS = TINY_PROMPTS[:len(LENGTHS)]  # one request per length


def served(ckpt: str):
    """(model, tokenizer, generate_stream) of a freshly loaded checkpoint: its engine loop reads the settings now."""
    model, tok = load_model(ckpt, device="cpu")
    return model, tok, get_generate_stream_function(model, ckpt)


@pytest.fixture(scope="module")
def medusa(medusa_dir):
    return served(medusa_dir)


def params(prompt: str, max_new_tokens: int, **extra) -> dict:
    return {"prompt": prompt, "temperature": 0.0, "max_new_tokens": max_new_tokens, "echo": False, **extra}


def run_alone(medusa, prompt, max_new_tokens, **extra) -> dict:
    model, tok, stream = medusa
    return list(stream(model, tok, params(prompt, max_new_tokens, **extra), "cpu", CONTEXT))[-1]


def run_together(medusa, requests: list[dict]) -> list[dict]:
    """Each request from its own thread, all started together; the last chunk of each."""
    return run_together_at(medusa, requests, CONTEXT)


def run_together_at(medusa, requests: list[dict], context: int) -> list[dict]:
    model, tok, stream = medusa
    results: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def worker(i):
        start.wait()
        results[i] = list(stream(model, tok, dict(requests[i]), "cpu", context))[-1]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


def test_sixteen_concurrent_requests_each_get_their_sequential_text(medusa):
    alone = [run_alone(medusa, p, n) for p, n in zip(PROMPTS, LENGTHS)]
    loop = engine_for(medusa[0], CONTEXT)
    steps_before = loop.stats.steps
    together = run_together(medusa, [params(p, n) for p, n in zip(PROMPTS, LENGTHS)])
    for a, b, prompt in zip(alone, together, PROMPTS):
        assert b["text"] == a["text"], prompt
        assert b["usage"] == a["usage"], prompt
        assert b["finish_reason"] == a["finish_reason"], prompt
    # They shared steps: far fewer batched steps than the requests' steps added up.
    assert loop.stats.max_rows > 1
    assert loop.stats.steps - steps_before < sum(r["spec"]["steps"] for r in together)
    assert loop.busy_slots() == 0


def test_greedy_text_is_unchanged_next_to_sampled_requests(medusa):
    """Sampled rows share the batched step (its sampled variant) and a repetition penalty takes a host step in
    the same loop; the greedy rows beside them stay exact."""
    greedy = [run_alone(medusa, p, 32) for p in PROMPTS[:4]]
    mixed = [params(p, 32) for p in PROMPTS[:4]]
    mixed += [params(p, 32, temperature=0.9, top_p=0.9) for p in PROMPTS[4:8]]
    mixed += [params(p, 32, repetition_penalty=1.3) for p in PROMPTS[8:10]]
    out = run_together(medusa, mixed)
    assert [o["text"] for o in out[:4]] == [g["text"] for g in greedy]
    assert all(o["finish_reason"] in ("stop", "length") for o in out)


def test_sampled_requests_share_batched_steps(medusa):
    """FastChat's default requests sample (temperature 0.7): many at once are verified in shared steps, not
    one host step each, and each still gets a sampled answer of its own."""
    loop = engine_for(medusa[0], CONTEXT)
    steps, rows = loop.stats.steps, loop.stats.rows
    out = run_together(medusa, [params(PROMPTS[0], 32, temperature=0.7) for _ in range(8)])
    assert all(o["finish_reason"] in ("stop", "length") for o in out)
    assert len({o["text"] for o in out}) > 1  # the same prompt, sampled eight times
    batched_rows = loop.stats.rows - rows  # one per request per batched step (a host step counts none)
    assert batched_rows >= sum(o["spec"]["steps"] for o in out) - len(out)  # every step but the prompt's
    assert loop.stats.steps - steps < batched_rows


def test_a_failed_sampled_capture_leaves_sampling_to_host_steps(medusa_dir, caplog):
    """Were the sampled step's graphs to fail at load, sampled requests would still be answered (by host steps),
    and the log would say why."""
    served_model = served(medusa_dir)
    loop = engine_for(served_model[0], CONTEXT)

    def failing_capture(*shape):
        raise RuntimeError("capture failed")

    loop._capture = failing_capture
    loop._capture_sampled([(0, 1, 256, True)])
    assert not loop.sampled_steps and "sampled requests take host steps" in caplog.text
    rows = loop.stats.rows
    out = run_together(served_model, [params(PROMPTS[0], 16, temperature=0.7) for _ in range(2)])
    assert all(o["finish_reason"] in ("stop", "length") and o["text"] for o in out)
    assert loop.stats.rows == rows  # no batched step ran them


def test_joining_and_cancelled_requests_leave_the_others_unchanged(medusa):
    model, tok, stream = medusa
    long_a = run_alone(medusa, PROMPTS[1], 64)
    long_b = run_alone(medusa, PROMPTS[3], 64)
    joined = run_alone(medusa, PROMPTS[6], 24)

    a = stream(model, tok, params(PROMPTS[1], 64), "cpu", CONTEXT)
    b = stream(model, tok, params(PROMPTS[3], 64), "cpu", CONTEXT, 1)
    cancelled = stream(model, tok, params(PROMPTS[5], 64), "cpu", CONTEXT)
    a_chunks, b_chunks = [next(a)], [next(b)]
    next(cancelled)
    cancelled.close()  # the client went away mid-stream
    late = stream(model, tok, params(PROMPTS[6], 24), "cpu", CONTEXT)  # joins mid-generation
    late_chunks = []
    for gen, chunks in ((a, a_chunks), (b, b_chunks), (late, late_chunks)):
        chunks.extend(gen)
    assert a_chunks[-1]["text"] == long_a["text"]
    assert b_chunks[-1]["text"] == long_b["text"]
    assert late_chunks[-1]["text"] == joined["text"]
    loop = engine_for(model, CONTEXT)
    loop_idle = [lp.busy_slots() for lp in loops_of(model)]
    assert loop_idle == [0] * len(loop_idle)
    assert loop.status()["busy_slots"] == 0


def test_streamed_text_only_grows_and_ends_as_one_full_decode(medusa):
    """Incremental detokenisation: every chunk extends the previous one; the last is FastChat's text."""
    model, tok, stream = medusa
    for prompt in PROMPTS[:6] + ["Üñïçødé text — with symbols ✓", "Numbers: 12345 and 678."]:
        chunks = list(stream(model, tok, params(prompt, 48), "cpu", CONTEXT, 1))
        texts = [c["text"] for c in chunks]
        assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:])), prompt
        assert texts[-1] == run_alone(medusa, prompt, 48)["text"]


# -- through the unchanged FastChat servers -------------------------------------------------------

SERVED = "medusa-vicuna-tiny"


@pytest.fixture(scope="module")
def servers(medusa_dir, tmp_path_factory):
    yield from module_servers(tmp_path_factory, medusa_dir, model_name=SERVED, limit_worker_concurrency=16)


print_server_logs_on_failure = logs_on_failure("servers")


def test_sixteen_api_clients_get_their_sequential_answers_and_free_every_slot(servers):
    from concurrent.futures import ThreadPoolExecutor

    from tests.servers import local_session

    http = local_session()

    def ask(i: int) -> str:
        r = http.post(servers.api_url + "/v1/chat/completions", timeout=300, json={
            "model": SERVED, "messages": [{"role": "user", "content": PROMPTS[i]}], "temperature": 0,
            "max_tokens": LENGTHS[i]})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    alone = [ask(i) for i in range(len(PROMPTS))]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(ask, range(len(PROMPTS))))
    assert together == alone
    status = http.post(servers.worker_url + "/worker_get_status", timeout=30).json()
    engine = status["spec_engine"][0]
    assert engine["slots"] == 16  # --limit-worker-concurrency sets the batch ceiling
    assert engine["max_rows"] > 1  # the concurrent requests shared batched steps
    assert engine["tokens"] >= engine["rows"] and engine["nodes"] >= engine["steps"]  # per row: 1 token at least
    assert engine["busy_slots"] == 0 and status["queue_length"] == 0


def test_over_the_api_default_sampled_chats_share_batched_steps(servers):
    """Chat completions that leave the temperature to FastChat's API server (0.7) are sampled, and eight at once
    are verified in shared steps: the worker's engine counts more request rows than steps."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.servers import local_session, worker_status

    http = local_session()
    before = worker_status(servers.worker_url, timeout=30)["spec_engine"][0]

    def ask(i: int) -> str:
        r = http.post(servers.api_url + "/v1/chat/completions", timeout=300, json={
            "model": SERVED, "messages": [{"role": "user", "content": PROMPTS[i]}], "max_tokens": 24})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert all(answers)
    after = worker_status(servers.worker_url, timeout=30)["spec_engine"][0]
    rows, steps = after["rows"] - before["rows"], after["steps"] - before["steps"]
    assert rows > steps > 0  # batched steps ran them, several rows at a time


def test_over_the_api_a_joining_and_a_cancelled_request_leave_the_others_unchanged(servers):
    """Through FastChat's servers: two streams in flight, a third cut off by its client mid-stream, and a
    fourth that joins while the first two are still being read; each survivor gets its sequential answer."""
    from fastchat_spec.bench.client import send_chat
    from tests.servers import delta_text, local_session, open_chat_stream, wait_for, worker_status

    http = local_session()
    api = servers.api_url + "/v1"

    def ask(prompt: str, max_tokens: int, stream: bool = False) -> str:
        reply = send_chat(http, api, SERVED, prompt, max_tokens, stream, timeout=300)
        assert reply.ok, reply
        return reply.text

    long_a, long_b, joining = (PROMPTS[1], 400), (PROMPTS[3], 400), (PROMPTS[6], 24)
    # Streamed alone too: FastChat's API server drops U+FFFD from streamed deltas, not from whole answers.
    alone = [ask(*long_a, stream=True), ask(*long_b, stream=True), ask(*joining)]

    a, a_lines, a_text = open_chat_stream(http, api, SERVED, *long_a)
    b, b_lines, b_text = open_chat_stream(http, api, SERVED, *long_b)
    cancelled, _, _ = open_chat_stream(http, api, SERVED, PROMPTS[5], 400)
    cancelled.close()  # its client goes away mid-stream
    joined = ask(*joining)  # a new request joins the running ones
    a_text += "".join(delta_text(line) for line in a_lines)
    b_text += "".join(delta_text(line) for line in b_lines)
    a.close()
    b.close()
    assert [a_text, b_text, joined] == alone

    def idle() -> bool:  # the cut stream's slot is freed once the worker sees it gone
        status = worker_status(servers.worker_url, timeout=30)
        return status["spec_engine"][0]["busy_slots"] == 0 and status["queue_length"] == 0

    wait_for(idle, 120, "every slot free after every client finished or left")


def test_batch_invariant_mode_steps_each_request_alone_with_the_same_text(medusa_dir, stock_texts, monkeypatch):
    """FASTCHAT_SPEC_BATCH_INVARIANT=1: each row runs alone at a fixed shape; the texts are FastChat's own."""
    from fastchat_spec.generate.loop import INVARIANT_ENV

    monkeypatch.setenv(INVARIANT_ENV, "1")
    medusa = served(medusa_dir)
    model = medusa[0]
    alone = [run_alone(medusa, p, n) for p, n in zip(PROMPTS[:6], LENGTHS[:6])]
    together = run_together(medusa, [params(p, n) for p, n in zip(PROMPTS[:6], LENGTHS[:6])])
    assert [t["text"] for t in together] == [a["text"] for a in alone]
    assert [a["text"] for a in alone] == [stock_texts.text(p, n) for p, n in zip(PROMPTS[:6], LENGTHS[:6])]
    assert engine_for(model, CONTEXT).invariant


def test_a_reader_that_falls_behind_gets_the_same_answer_and_stats(medusa):
    """A slow client reads many steps at once: fewer chunks, same text, usage and ``spec`` as a prompt reader."""
    model, tok, stream = medusa
    whole = run_alone(medusa, PROMPTS[1], 48)["text"]
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]  # a stop string mid-answer (it may land mid-step)
    request = params(PROMPTS[1], 48, stop=stop)
    prompt_reader = list(stream(model, tok, dict(request), "cpu", CONTEXT))
    slow = stream(model, tok, dict(request), "cpu", CONTEXT)
    loop = engine_for(model, CONTEXT)
    first = next(slow)  # the request is in the loop; let it finish before reading on
    while loop.busy_slots():
        threading.Event().wait(0.05)
    slow_reader = [first, *slow]
    assert prompt_reader[-1]["finish_reason"] == "stop"
    assert len(slow_reader) <= 2 < len(prompt_reader)
    for key in ("text", "usage", "finish_reason", "spec"):
        assert slow_reader[-1][key] == prompt_reader[-1][key], key


@pytest.mark.parametrize("ahead", ["1", "2"])
def test_a_request_that_fills_the_whole_context_keeps_its_text_beside_others(base_dir, tmp_path, monkeypatch,
                                                                            ahead):
    """The loop runs each request two steps (FASTCHAT_SPEC_STEPS_AHEAD: or one) past its end before it
    reads that step (the device works while the host hands out tokens). A request whose prompt and
    answer fill the model's context must still fit, and its neighbours must not notice. Heads that
    copy the base accept whole chains, so the last real step can overshoot the answer's end by
    several tokens."""
    from fastchat_spec.generate.loop import AHEAD_ENV

    monkeypatch.setenv(AHEAD_ENV, ahead)
    context = 160
    ckpt = write_medusa_checkpoint(str(tmp_path / "oracle"), tiny.oracle_medusa_heads(base_dir, 4), base_dir,
                                   tree=chain(4).to_list())
    medusa = served(ckpt)  # a loop of its own, sized for this context
    model, tok, stream = medusa
    prompt = PROMPTS[1]  # its answer repeats one token: every step accepts the whole chain
    full = context - len(tok(prompt).input_ids)
    requests = [params(prompt, full, stop_token_ids=[]), params(PROMPTS[0], 24), params(PROMPTS[5], 40)]
    alone = [list(stream(model, tok, dict(r), "cpu", context))[-1] for r in requests]
    together = run_together_at(medusa, requests, context)
    assert alone[0]["finish_reason"] == "length" and alone[0]["usage"]["completion_tokens"] == full
    assert [t["text"] for t in together] == [a["text"] for a in alone]
    loop = engine_for(model, context)
    assert loop.busy_slots() == 0 and loop.ahead == int(ahead)


def test_under_load_a_stream_gathers_steps_into_fewer_chunks_with_the_same_text(medusa, monkeypatch):
    """Beside another request, a stream sends a chunk per FASTCHAT_SPEC_STREAM_GAP_MS, not per step
    (each chunk costs the worker GIL time its engine loop needs); alone it still gets every step.
    The first text does not wait for the gap: the prefill's token alone is below FastChat's stream
    interval, and waiting a gap after it added 20 ms to every streamed request's first text under load."""
    from fastchat_spec.generate.stream import STREAM_GAP_ENV

    model, tok, stream = medusa
    monkeypatch.setenv(STREAM_GAP_ENV, "10000")  # longer than the answer takes: it must end the wait
    alone = list(stream(model, tok, params(PROMPTS[2], 48), "cpu", CONTEXT))
    neighbour = stream(model, tok, params(PROMPTS[4], 1000, stop_token_ids=[]), "cpu", CONTEXT)
    next(neighbour)  # in the loop, and far from done
    try:
        loaded = list(stream(model, tok, params(PROMPTS[2], 48), "cpu", CONTEXT))
    finally:
        neighbour.close()
    assert len(alone) > 4
    assert len(loaded) == 2
    assert loaded[0]["text"] and loaded[0]["finish_reason"] is None  # the first text, long before the gap ends
    assert loaded[-1]["text"] == alone[-1]["text"]
    assert loaded[-1]["usage"] == alone[-1]["usage"] and loaded[-1]["spec"] == alone[-1]["spec"]


def test_a_busy_step_verifies_part_of_each_tree_and_keeps_every_text(medusa_dir, stock_texts, monkeypatch):
    """FASTCHAT_SPEC_STEP_TOKENS caps the tree nodes one batched step verifies over all its rows:
    alone a request verifies its whole tree (up to the cap), beside five others each row verifies
    only its likeliest few nodes. Every text stays the sequential one."""
    from fastchat_spec.generate.loop import STEP_TOKENS_ENV

    monkeypatch.setenv(STEP_TOKENS_ENV, "12")
    medusa = served(medusa_dir)
    model = medusa[0]
    loop = engine_for(model, CONTEXT)
    alone = [run_alone(medusa, p, n) for p, n in zip(PROMPTS[:6], LENGTHS[:6])]
    assert loop.stats.nodes == 12 * loop.stats.steps  # one row: the first 12 nodes of a 64-node tree
    before = loop.stats.as_dict()
    together = run_together(medusa, [params(p, n) for p, n in zip(PROMPTS[:6], LENGTHS[:6])])
    assert [t["text"] for t in together] == [a["text"] for a in alone]
    assert [t["usage"] for t in together] == [a["usage"] for a in alone]
    assert [a["text"] for a in alone] == [stock_texts.text(p, n) for p, n in zip(PROMPTS[:6], LENGTHS[:6])]
    steps, nodes = loop.stats.steps - before["steps"], loop.stats.nodes - before["nodes"]
    assert loop.stats.max_rows > 1 and nodes < 12 * steps  # busy steps verified fewer nodes per row


def test_loop_settings_that_are_not_numbers_or_out_of_range_are_refused_by_name(monkeypatch):
    from fastchat_spec.generate.loop import AHEAD_ENV, STEP_TOKENS_ENV, step_tokens, steps_ahead

    monkeypatch.setenv(STEP_TOKENS_ENV, "lots")
    with pytest.raises(ValueError, match=STEP_TOKENS_ENV):
        step_tokens()
    for bad in ("3", "-1", "two"):
        monkeypatch.setenv(AHEAD_ENV, bad)
        with pytest.raises(ValueError, match=AHEAD_ENV):
            steps_ahead()
    from fastchat_spec.generate.prefill import PREFILL_STREAM_ENV, prefill_stream

    monkeypatch.setenv(PREFILL_STREAM_ENV, "yes")
    with pytest.raises(ValueError, match=PREFILL_STREAM_ENV):
        prefill_stream()
    monkeypatch.delenv(PREFILL_STREAM_ENV)
    assert prefill_stream()  # prompt forwards run beside the step in flight unless asked not to
    monkeypatch.setenv(PREFILL_STREAM_ENV, "0")
    assert not prefill_stream()


def test_prompt_graphs_never_share_the_steps_capture_stream_even_when_pytorch_hands_it_out_again(monkeypatch):
    """On the GPU, graphs captured on one stream share its cuBLAS workspace; prompt graphs replay beside the
    steps (FASTCHAT_SPEC_PREFILL_STREAM=1), so sharing would corrupt both (wrong greedy tokens on an H100).
    PyTorch hands streams out from a pool in turn: the prefill's stream is drawn again if it is the steps'."""
    import itertools

    import torch

    from fastchat_spec.generate import cuda_graphs

    handles = itertools.cycle([1, 2])  # a pool of two streams, handed out in turn

    class PooledStream:
        def __init__(self, device=None):
            self.cuda_stream = next(handles)

    monkeypatch.setattr(torch.cuda, "Stream", PooledStream)
    monkeypatch.setattr(cuda_graphs, "_CAPTURE_STREAMS", {})
    device = torch.device("cuda", 0)
    steps = cuda_graphs.default_capture_stream(device)  # stream 1
    assert cuda_graphs.default_capture_stream(device) is steps  # one per device
    next(handles)  # others took stream 2: the pool's next hand-out is stream 1 again
    assert cuda_graphs.side_stream(device).cuda_stream != steps.cuda_stream


@pytest.mark.parametrize("ahead", ["0", "1"])
def test_steps_launched_ahead_keep_fastchats_own_text(medusa_dir, stock_texts, monkeypatch, ahead):
    """However many batched steps the loop keeps in flight while it hands out tokens
    (FASTCHAT_SPEC_STEPS_AHEAD: 0, 1, or 2 by default), every concurrent answer is FastChat's own
    greedy text, token for token: no step's tokens are lost or handed to the wrong request."""
    from fastchat_spec.generate.loop import AHEAD_ENV

    monkeypatch.setenv(AHEAD_ENV, ahead)
    medusa = served(medusa_dir)
    model = medusa[0]
    requests = [params(p, n) for p, n in zip(PROMPTS[:8], LENGTHS[:8])]
    together = run_together(medusa, requests)
    for request, answer in zip(requests, together):
        assert answer["text"] == stock_texts.text(request["prompt"], request["max_new_tokens"]), request["prompt"]
    assert engine_for(model, CONTEXT).stats.max_rows > 1


@pytest.mark.parametrize("ahead", ["0", "2"])
def test_requests_ended_by_their_first_token_answer_it_beside_longer_ones(medusa_dir, stock_texts, monkeypatch,
                                                                           ahead):
    """The prompt's first token reaches the host only with the request's first step, so a request
    that this token ends (max_new_tokens 1, or a stop token id) runs steps past its end in flight.
    Its answer is still FastChat's own (text, finish_reason, token count), the requests beside it keep
    theirs, and every slot is free afterwards."""
    import torch

    from fastchat_spec.generate.loop import AHEAD_ENV

    monkeypatch.setenv(AHEAD_ENV, ahead)
    medusa = served(medusa_dir)
    model, tok, _ = medusa
    with torch.no_grad():
        first_id = int(model.base(torch.tensor([tok(PROMPTS[2]).input_ids])).logits[0, -1].argmax())
    requests = [params(p, n) for p, n in zip(PROMPTS[:6], [1, 40, 1, 2, 24, 1])]
    requests.append(params(PROMPTS[2], 32, stop_token_ids=[first_id]))
    together = run_together(medusa, requests)
    for request, answer in zip(requests, together):
        extra = {k: v for k, v in request.items() if k == "stop_token_ids"}
        stock = stock_texts.last(request["prompt"], request["max_new_tokens"], **extra)
        assert (answer["text"], answer["finish_reason"]) == (stock["text"], stock["finish_reason"]), request
        # Counted as in test_contract: every generated token (FastChat's own count is one short at "length").
        counted = request["max_new_tokens"] if stock["finish_reason"] == "length" else \
            stock["usage"]["completion_tokens"]
        assert answer["usage"]["completion_tokens"] == counted, request
    assert together[-1]["finish_reason"] == "stop"
    assert [lp.busy_slots() for lp in loops_of(model)] == [0] * len(loops_of(model))


def _drafting_cases():
    """Every tiny checkpoint of the methods whose heads draft on the device (the batched step's proposers)."""
    for name in ("medusa", "hydra", "chimera"):
        for checkpoint in TINY_CHECKPOINTS[name]:
            yield pytest.param(METHODS[name], checkpoint, id=f"{name}-{checkpoint.name}")


def _same_drafts_alone_and_together(served_model, requests: list[dict]) -> list[dict]:
    """Each request's last chunk alone; the same requests together give the same text and the same tokens
    accepted at every step (the same text alone would hide a mix-up of drafts: verification keeps greedy
    text exact whatever the drafts)."""
    alone = [run_alone(served_model, r["prompt"], r["max_new_tokens"]) for r in requests]
    together = run_together(served_model, requests)
    for a, t in zip(alone, together):
        assert t["text"] == a["text"]
        assert t["spec"]["accepted"] == a["spec"]["accepted"], (a["spec"], t["spec"])
    return alone


def _drafting_model(method, checkpoint, tmp_path, base_dir, base_model):
    path = checkpoint.write(method.write_checkpoint, str(tmp_path / f"{method.name}-vicuna-{checkpoint.name}"),
                            base_dir, base_model)
    return served(path)


@pytest.mark.parametrize("method,checkpoint", list(_drafting_cases()))
def test_beside_others_a_request_drafts_and_accepts_what_it_does_alone(tmp_path, base_dir, base_model, method,
                                                                        checkpoint):
    """A batched step drafts all its rows at once; no row's drafts may depend on another's."""
    served_model = _drafting_model(method, checkpoint, tmp_path, base_dir, base_model)
    alone = _same_drafts_alone_and_together(served_model, [params(prompt, 40) for prompt in PROMPTS[:4]])
    assert sum(sum(a["spec"]["accepted"]) for a in alone) > 0, "drafts should land: the test covers multi-token steps"


@pytest.mark.parametrize("method,checkpoint", list(_drafting_cases()))
def test_a_long_request_that_ends_first_leaves_the_others_drafts_alone(tmp_path, base_dir, base_model, method,
                                                                       checkpoint):
    """When the longest request ends, the next steps attend to fewer positions; the slot it freed (whose
    proposer state still points past them) must neither fail the step nor touch the others."""
    served_model = _drafting_model(method, checkpoint, tmp_path, base_dir, base_model)
    long_prompt = " ".join(PROMPTS[:12])  # a few hundred tokens: a longer length bucket than the others'
    _same_drafts_alone_and_together(served_model, [params(long_prompt, 3), params(PROMPTS[1], 60),
                                                   params(PROMPTS[2], 60)])


@pytest.mark.parametrize("method,checkpoint", list(_drafting_cases()))
def test_a_slot_taken_again_drafts_for_its_new_request_as_if_fresh(tmp_path, base_dir, base_model, monkeypatch,
                                                                   method, checkpoint):
    """Two slots, six requests: four take a slot that an earlier request used, whose proposer state (a last
    hidden state, a prefix or encoder cache, the last two tokens) must not leak into the new request's drafts."""
    monkeypatch.setenv(MAX_BATCH_ENV, "2")
    served_model = _drafting_model(method, checkpoint, tmp_path, base_dir, base_model)
    assert engine_for(served_model[0], CONTEXT).slots == 2
    _same_drafts_alone_and_together(served_model, [params(prompt, n) for prompt, n in
                                                   zip(PROMPTS[3:9], [24, 8, 32, 16, 4, 28])])


def test_too_little_memory_for_every_slots_drafter_state_serves_fewer_at_a_time(tmp_path, base_dir, base_model,
                                                                                  monkeypatch):
    """The Hydra++ prefix caches of all slots are allocated with the KV rows: when they do not fit, the loop
    halves its slots (as for the KV rows) and every request is still answered with its own text."""
    import torch

    from fastchat_spec.generate.proposers import hydra

    class TightStore(hydra.SlotStore):
        def __init__(self, config, slots, *args, **kwargs):
            if slots > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (a test's limit of 2 slots)")
            super().__init__(config, slots, *args, **kwargs)

    monkeypatch.setenv(MAX_BATCH_ENV, "8")
    monkeypatch.setattr(hydra, "SlotStore", TightStore)
    method = METHODS["hydra"]
    checkpoint = next(c for c in TINY_CHECKPOINTS["hydra"] if c.name == "prefix-mlp-4-heads")
    served_model = _drafting_model(method, checkpoint, tmp_path, base_dir, base_model)
    assert engine_for(served_model[0], CONTEXT).slots == 2
    _same_drafts_alone_and_together(served_model, [params(prompt, 16) for prompt in PROMPTS[:5]])
