"""One chat request through FastChat's OpenAI API, streamed or not, read into a ``Reply``.

The client side of ``bench.load`` and ``bench.api`` (and of the fault tests):
what came back (text, tokens, error), when (latency, time to first token),
and nothing else; judging the answer is ``bench.load``'s.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import requests

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Reply:
    """One /v1/chat/completions request as the client saw it."""

    ok: bool
    text: str = ""
    error: str | None = None
    error_code: int | None = None
    finish_reason: str | None = None
    usage_tokens: int | None = None  # usage.completion_tokens (non-streamed only: FastChat's stream has none)
    prompt_tokens: int | None = None  # usage.prompt_tokens (non-streamed only)
    seconds: float = 0.0  # wall time to the whole answer (non-streamed) or to [DONE]
    ttft_s: float | None = None  # streamed: time to the first chunk with text
    chunks: int = 0
    malformed: str | None = None  # a stream that breaks the OpenAI chunk format (the text may still be right)


def session_for(api_base: str) -> requests.Session:
    """A requests session; for a loopback server, one that ignores HTTP(S)_PROXY."""
    session = requests.Session()
    if urlparse(api_base).hostname in LOOPBACK:
        session.trust_env = False
    return session


def chat_payload(model: str, question: str, max_tokens: int, stream: bool) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": question}],
            "temperature": 0, "max_tokens": max_tokens, "stream": stream}


def error_in(body: dict) -> tuple[int, str] | None:
    """FastChat's error, if ``body`` is one: {"object": "error", "code", "message"} from the API
    server, or {"text", "error_code"} from the worker relayed inside a stream."""
    if body.get("object") == "error":
        return body.get("code"), body.get("message", "")
    if body.get("error_code"):
        return body["error_code"], body.get("text", "")
    return None


def generated_tokens(usage_tokens: int | None, finish_reason: str | None, max_tokens: int) -> int:
    """Tokens the worker generated, from ``usage.completion_tokens``.

    FastChat's own generate_stream reports one fewer (the last loop index) when it
    stops at the length limit; ours reports the count. Both generated max_tokens then.
    """
    n = int(usage_tokens or 0)
    if finish_reason == "length" and n == max_tokens - 1:
        return max_tokens
    return n


def send_chat(session, api_base: str, model: str, question: str, max_tokens: int, stream: bool,
              timeout: float) -> Reply:
    """One chat request; never raises for what a server or the connection does wrong.

    ``timeout`` bounds the connection and every wait for bytes (a stalled stream ends
    with an error instead of hanging the client).
    """
    t0 = time.perf_counter()
    try:
        with session.post(api_base + "/chat/completions", json=chat_payload(model, question, max_tokens, stream),
                          stream=stream, timeout=(min(timeout, 10.0), timeout)) as r:
            reply = _read_stream(r, t0) if stream and r.ok else _read_body(r)
    except requests.RequestException as e:  # refused, reset, cut mid-stream, timed out
        reply = Reply(ok=False, error=f"{type(e).__name__}: {e}")
    reply.seconds = time.perf_counter() - t0
    return reply


def _read_body(r: requests.Response) -> Reply:
    try:
        body = r.json()
    except ValueError:
        return Reply(ok=False, error=f"HTTP {r.status_code}: {r.text[:500]!r} (not JSON)")
    err = error_in(body) if isinstance(body, dict) else None
    if err:
        return Reply(ok=False, error_code=err[0], error=f"error {err[0]}: {err[1]}")
    if not r.ok:
        return Reply(ok=False, error=f"HTTP {r.status_code}: {str(body)[:500]}")
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return Reply(ok=False, error=f"answer without choices[0].message.content: {str(body)[:500]}")
    usage = body.get("usage") or {}
    return Reply(ok=True, text=text, finish_reason=choice.get("finish_reason"),
                 usage_tokens=usage.get("completion_tokens"), prompt_tokens=usage.get("prompt_tokens"))


def _read_stream(r: requests.Response, t0: float) -> Reply:
    """Server-sent events up to [DONE]; a stream that stops before [DONE] is an error."""
    reply, parts, finished = Reply(ok=False), [], False
    for line in r.iter_lines(chunk_size=None):  # bytes: a UTF-8 character may span two reads
        if not line.startswith(b"data: "):
            continue
        data = line[len(b"data: "):].decode("utf-8", "replace")
        if data == "[DONE]":
            reply.ok = True
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            reply.malformed = reply.malformed or f"a chunk that is not JSON: {data[:200]!r}"
            continue
        err = error_in(chunk)
        if err:
            reply.error_code, reply.error = err[0], f"error {err[0]} inside the stream: {err[1]}"
            return reply
        try:
            choice = chunk["choices"][0]
            delta = choice["delta"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            reply.malformed = reply.malformed or f"a chunk without choices[0].delta: {data[:200]!r}"
            continue
        reply.chunks += 1
        if delta and finished:
            reply.malformed = reply.malformed or "text after the chunk with finish_reason"
        if delta and reply.ttft_s is None:
            reply.ttft_s = time.perf_counter() - t0
        parts.append(delta)
        if choice.get("finish_reason"):
            finished, reply.finish_reason = True, choice["finish_reason"]
    reply.text = "".join(parts)
    if not reply.ok:
        reply.error = f"the stream ended without [DONE] after {reply.chunks} chunks"
    return reply
