"""What a client of FastChat's unchanged servers sees when a worker fails, with our decoder inside.

One stack for the module: ``python -m fastchat.serve.controller``, two
``model_worker`` processes serving the bundled Medusa model under one name
(FastChat's own dispatch, ``shortest_queue``, picks between them) and the
``openai_api_server``. The controller forgets a worker whose heart beats stop
for FASTCHAT_CONTROLLER_HEART_BEAT_EXPIRATION seconds; it checks that every
expiry period, so a dead worker is dropped at most two periods after its last
beat. The tests shorten the period (FastChat reads both constants from the
environment) so that this takes seconds, not minutes.

The tests run in file order and hand the stack on: a client disconnects (both
workers up), one of two workers is killed (one left), the last one is killed
mid-stream and restarted, and it is finally stopped with SIGTERM. Each test
first restarts what it needs, so any one of them also runs alone.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import fastchat_spec
from fastchat_spec.bench.client import Reply, send_chat, session_for
from tests.servers import (checkout_env, logs_on_failure, module_servers, open_chat_stream, port_is_free,
                           wait_for, worker_status)

MODEL = "medusa-nano"
EXPIRATION = 10  # seconds without a heart beat before the controller may drop a worker
BEAT = 2  # seconds between a worker's heart beats: several beats may be late before a live one is dropped
DROPPED_WITHIN = 2 * EXPIRATION + 5  # the sweep runs every EXPIRATION seconds; 5 s for a loaded machine
STORY = "Write a very long story about a dragon and a knight."  # the bundled model answers at length
LONG = 1500  # max_tokens of a stream cut short: decoding all of it costs about 35 CPU-seconds (measured)
ABANDONED_CPU_S = 5.0  # CPU-seconds a worker may spend after its client left (measured: 0.15)
HELLO = "Hello"
IN_FLIGHT_TOKENS = 300  # long enough to still be decoding when a worker is killed, even when batched
WAIT = 120  # generous bound for anything a 2-core machine does slowly (never a timing assertion)
FASTCHAT_INVALID_MODEL = 40301  # the API server's answer for a model without a worker

http = requests.Session()
http.trust_env = False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = checkout_env()
    env["FASTCHAT_CONTROLLER_HEART_BEAT_EXPIRATION"] = str(EXPIRATION)
    env["FASTCHAT_WORKER_HEART_BEAT_INTERVAL"] = str(BEAT)
    yield from module_servers(tmp_path_factory, fastchat_spec.default_model_path(), env, model_name=MODEL,
                              limit_worker_concurrency=8, num_workers=2)


print_server_logs_on_failure = logs_on_failure("stack")


@pytest.fixture(scope="module")
def api(stack) -> str:
    return stack.api_url + "/v1"


def send(api: str, question: str, max_tokens: int, stream: bool) -> Reply:
    return send_chat(session_for(api), api, MODEL, question, max_tokens, stream, timeout=300)


@pytest.fixture(scope="module")
def answers(api) -> dict:
    """Sequential answers, before any fault: (question, max_tokens, stream) -> text."""
    out = {}
    for question, max_tokens in [(HELLO, 8), (STORY, 60)]:
        for stream in (False, True):
            reply = send(api, question, max_tokens, stream)
            assert reply.ok and reply.text, reply
            out[question, max_tokens, stream] = reply.text
    return out


# ----------------------------------------------------------------------------- helpers


def live(stack) -> list:
    return [w for w in stack.workers if w.proc.alive()]


def revive(stack, n: int) -> None:
    """Restart dead workers until ``n`` are up (for a test run on its own)."""
    for worker in list(stack.workers):
        if len(live(stack)) >= n:
            return
        if not worker.proc.alive():
            stack.restart_worker(worker)


def queue_length(worker) -> int:
    return worker_status(worker.url)["queue_length"]


def cpu_until_idle(proc, since: float) -> float:
    """CPU-seconds ``proc`` has used since the reading ``since``, once it has gone idle (a second in
    which it used under 0.3 CPU-s; heart beats cost a few milliseconds). CPU time, unlike wall time,
    does not depend on what else the machine runs."""
    previous, deadline = proc.cpu_seconds(), time.monotonic() + WAIT
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = proc.cpu_seconds()
        if now - previous < 0.3:
            return now - since
        previous = now
    pytest.fail(f"{proc.name} still busy {WAIT}s after its only client left")


def open_stream(api: str, question: str, max_tokens: int):
    """A streamed request read until its third chunk with text: the worker is mid-generation."""
    response, lines, _ = open_chat_stream(http, api, MODEL, question, max_tokens, texts=3)
    return response, lines


def stream_ending(lines) -> str:
    """How a stream ends: 'done' at [DONE], else the exception or 'closed without [DONE]'."""
    try:
        for line in lines:
            if line == b"data: [DONE]":
                return "done"
    except requests.RequestException as e:
        return f"{type(e).__name__}: {e}"
    return "closed without [DONE]"


def burst(api: str, n: int) -> list[tuple[bool, Reply]]:
    """``n`` short requests at once, half of them streamed: (streamed, reply) pairs."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: (i % 2 == 1, send(api, HELLO, 8, i % 2 == 1)), range(n)))


# ----------------------------------------------------------------------------- the faults


def test_a_client_that_disconnects_mid_stream_frees_its_worker(stack, api, answers):
    revive(stack, 1)
    response, _ = open_stream(api, STORY, LONG)
    serving = [w for w in live(stack) if queue_length(w) == 1]
    assert len(serving) == 1  # the stream holds one worker slot
    cpu_at_close = serving[0].proc.cpu_seconds()
    response.close()  # the client goes away mid-answer

    # FastChat's API server closes its stream to the worker, whose semaphore is released ...
    wait_for(lambda: sum(queue_length(w) for w in live(stack)) == 0, WAIT,
             "the workers' queue_length back to 0 after the client disconnected")
    # ... and the abandoned generation stops instead of running on to max_tokens for nobody.
    spent = cpu_until_idle(serving[0].proc, cpu_at_close)
    assert spent < ABANDONED_CPU_S, f"the worker spent {spent:.1f} CPU-s after the client left"
    # The engine loop gave the request's KV slot back (it reports its slots next to queue_length).
    engines = worker_status(serving[0].url)["spec_engine"]
    assert all(engine["busy_slots"] == 0 for engine in engines), engines
    for stream in (False, True):
        reply = send(api, STORY, 60, stream)
        assert reply.ok and reply.text == answers[STORY, 60, stream], reply
    stack.check_alive()


def test_killing_one_of_two_workers_loses_only_the_requests_it_was_serving(stack, api, answers):
    revive(stack, 2)
    survivor, victim = live(stack)[:2]
    # Long answers, so that all 4 requests are still in flight when one worker is killed.
    expected = {stream: send(api, STORY, IN_FLIGHT_TOKENS, stream).text for stream in (False, True)}
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(send, api, STORY, IN_FLIGHT_TOKENS, i % 2 == 1) for i in range(4)]
        wait_for(lambda: queue_length(survivor) + queue_length(victim) == 4, WAIT,
                 "the 4 requests dispatched to the two workers")
        on_survivor = queue_length(survivor)
        victim.proc.kill()  # kill -9: no clean-up, no goodbye to the controller
        killed_at = time.monotonic()
        replies = [f.result() for f in futures]  # send_chat bounds each one

    ok = [r for r in replies if r.ok]
    print(f"\nin flight at kill -9: {on_survivor} on the survivor, {4 - on_survivor} on the killed worker; "
          f"{len(ok)} completed; errors: {[r.error for r in replies if not r.ok]}")
    assert len(ok) >= on_survivor, replies  # requests in flight on the surviving worker complete
    for r, stream in zip(replies, [False, True] * 2):
        if r.ok:
            assert r.text == expected[stream]
        else:  # a request on the killed worker fails at once, with an error and not a hang
            assert "Timeout" not in r.error, r.error

    # Stock FastChat's API server keeps sending requests to the dead worker until the controller
    # drops it at heart-beat expiry (each one an HTTP 500, docs/reliability.md). The hook checks the
    # worker it is given and has the controller drop a dead one first: no request is lost.
    window = []
    while time.monotonic() < killed_at + DROPPED_WITHIN:
        window += burst(api, 8)
    failed = [r for _, r in window if not r.ok]
    assert not failed, f"{len(failed)} of {len(window)} requests failed after the kill: {[r.error for r in failed]}"
    for stream, r in window:
        assert r.text == answers[HELLO, 8, stream]

    # After expiry every request is served by the surviving worker.
    after = burst(api, 8) + burst(api, 8)
    assert all(r.ok for _, r in after), [r.error for _, r in after if not r.ok]
    assert all(r.text == answers[HELLO, 8, stream] for stream, r in after)
    assert survivor.proc.alive()


def test_kill_9_mid_stream_ends_the_stream_and_a_restarted_worker_serves_again(stack, api, answers):
    revive(stack, 1)
    response, lines = open_stream(api, STORY, LONG)
    serving = [w for w in live(stack) if queue_length(w) == 1]
    assert len(serving) == 1
    for worker in live(stack):  # the serving one first; then no worker is left for the model
        worker.proc.kill()
    t0 = time.monotonic()
    ending = stream_ending(lines)  # the read timeout (300 s) is far above WAIT: a hang would fail below
    waited = time.monotonic() - t0
    response.close()
    assert ending != "done", "the stream completed although its worker was killed"
    assert waited < WAIT and "Timeout" not in ending, (waited, ending)

    wait_for(lambda: not stack.controller_lists_model(), DROPPED_WITHIN,
             "the controller dropping the killed worker after heart-beat expiry")
    reply = send(api, HELLO, 8, False)  # no worker: a clean error at once
    assert not reply.ok and reply.error_code == FASTCHAT_INVALID_MODEL, reply

    restarted = stack.restart_worker(serving[0])  # same address, as a service manager restarts it
    for stream in (False, True):
        reply = send(api, STORY, 60, stream)
        assert reply.ok and reply.text == answers[STORY, 60, stream], reply
    assert restarted.proc.alive()


def test_sigterm_stops_a_worker_after_its_running_request(stack, api, answers):
    revive(stack, 1)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(send, api, STORY, 60, True)
        wait_for(lambda: any(queue_length(w) for w in live(stack)), WAIT, "the request reaching a worker")
        serving = next(w for w in live(stack) if queue_length(w))
        code = serving.proc.terminate(WAIT)  # kill PID: uvicorn lets open requests finish, then exits
        reply = running.result()
    assert reply.ok and reply.text == answers[STORY, 60, True], reply
    # uvicorn re-raises the SIGTERM it handled once it has shut down, hence -15 (or 0)
    assert code in (0, -15), f"worker still running {WAIT}s after SIGTERM (None) or failed: {code}"
    assert "Finished server process" in serving.proc.log()
    assert port_is_free(serving.port)

    for worker in live(stack):  # an idle worker stops the same way
        assert worker.proc.terminate(WAIT) in (0, -15)
        assert port_is_free(worker.port)
    # FastChat's /v1/models asks the controller to re-check its workers: stopped ones go at once.
    assert http.get(api + "/models", timeout=30).json()["data"] == []
    assert not stack.controller_lists_model()
