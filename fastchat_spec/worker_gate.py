"""The model worker's endpoints, replaced so that every request gives its concurrency slot back.

Part of what the hook changes in FastChat 0.2.36 (``fastchat_patches.py``
applies it when ``fastchat.serve.base_model_worker`` is imported), for every
model, speculative or not.
"""
from __future__ import annotations

import contextlib
import re

_WRAPPED = "__fastchat_spec_wrapped__"
# Arrays and objects inside each other that a body may hold (FastChat's requests nest three deep).
MAX_JSON_DEPTH = 64
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def patch_worker_endpoints(base_model_worker) -> None:
    """Every request gives its concurrency slot back; a body that is no request gets HTTP 400.

    FastChat 0.2.36 gives the slot back in a BackgroundTask that runs only
    when a stream ends cleanly (and after ``generate_gate`` only if it
    returns): a request that raises, e.g. the body ``[]``, keeps its slot,
    and after ``--limit-worker-concurrency`` of them the worker never answers
    again. Here one ``async with`` holds the slot around the whole response,
    and the body is checked before the slot is taken.
    """
    from starlette.routing import Route

    if getattr(base_model_worker.api_generate_stream, _WRAPPED, False):
        return
    endpoints = _worker_endpoints(base_model_worker)
    routes = base_model_worker.app.router.routes
    for i, route in enumerate(routes):
        endpoint = endpoints.get(getattr(route, "path", None))
        if endpoint is not None:
            routes[i] = Route(route.path, endpoint, methods=["POST"], name=route.name)
            setattr(base_model_worker, route.name, endpoint)


def _worker_endpoints(bmw) -> dict:
    """Starlette endpoints (they take the request) for FastChat's worker paths, by path."""
    import anyio
    from starlette.responses import JSONResponse

    from fastchat_spec.generate.request import check_body

    async def api_generate_stream(request):
        params = await _read_body(request, check_body)
        return _SlotStream(bmw, lambda: bmw.worker.generate_stream_gate(params))

    async def api_generate(request):
        params = await _read_body(request, check_body)
        async with _worker_slot(bmw):
            # anyio's thread keeps the slot until the thread is done, even if this task is cancelled
            output = await anyio.to_thread.run_sync(bmw.worker.generate_gate, params)
        return JSONResponse(output)

    async def api_get_embeddings(request):
        params = await _read_body(request, _check_embedding_body)
        async with _worker_slot(bmw):
            embedding = await anyio.to_thread.run_sync(bmw.worker.get_embeddings, params)
        return JSONResponse(embedding)

    async def api_count_token(request):
        # FastChat's API server counts every prompt here first; a megabyte takes a second to
        # tokenize, which must not stall the worker's event loop.
        params = await _read_body(request, check_body)
        return JSONResponse(await anyio.to_thread.run_sync(bmw.worker.count_token, params))

    endpoints = {"/worker_generate_stream": api_generate_stream, "/worker_generate": api_generate,
                 "/worker_get_embeddings": api_get_embeddings, "/count_token": api_count_token}
    for endpoint in endpoints.values():
        setattr(endpoint, _WRAPPED, True)
    return endpoints


def nested_deeper_than(text: str, limit: int) -> bool:
    """Whether JSON ``text`` nests arrays and objects more than ``limit`` deep (brackets inside strings do
    not count), found without recursion and stopping at the first bracket past the limit: ``json.loads``
    recurses in C, and a body nested a thousand deep brings the worker to Python's recursion limit,
    where any finalizer the garbage collector runs meanwhile fails."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        elif token in "]}":
            depth -= 1
    return False


async def _read_body(request, check):
    """The JSON body, or HTTP 400 with the reason: not UTF-8, not JSON, or not what ``check`` wants."""
    import json

    from starlette.exceptions import HTTPException

    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPException(400, f"the request body is not UTF-8 (byte {body[e.start]:#04x} at offset {e.start}); "
                                 "send JSON encoded as UTF-8") from None
    if nested_deeper_than(text, MAX_JSON_DEPTH):
        raise HTTPException(400, f"the request body is JSON nested too deeply to read (more than {MAX_JSON_DEPTH} "
                                 "arrays and objects inside each other)")
    try:
        params = json.loads(text)
    except ValueError as e:  # JSONDecodeError, and integers longer than Python reads
        raise HTTPException(400, f"the request body is not valid JSON: {e}") from None
    try:
        check(params)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    return params


def _check_embedding_body(params) -> None:
    from fastchat_spec.generate.request import RequestError, check_text, json_kind

    if not isinstance(params, dict):
        raise RequestError(f"an embedding request is a JSON object with an 'input', got {json_kind(params)}")
    texts = params.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise RequestError(f"input must be a string or a non-empty list of strings, got {json_kind(texts)}")
    for i, text in enumerate(texts):
        check_text(f"input[{i}]", text)


@contextlib.asynccontextmanager
async def _worker_slot(bmw):
    """One of the worker's ``--limit-worker-concurrency`` slots, given back however the body ends."""
    await bmw.acquire_worker_semaphore()
    try:
        yield
    finally:
        bmw.release_worker_semaphore()


class _SlotStream:
    """An ASGI response: FastChat's chunk stream, inside one worker slot from first to last byte.

    The slot is taken when the response starts (as FastChat does, before the
    headers) and given back when it ends: finished, failed, cancelled, or its
    client gone. The generator is then closed, so a generation nobody reads
    stops (closing runs its ``finally`` blocks, off the event loop).
    """

    def __init__(self, bmw, open_stream):
        self.bmw = bmw
        self.open_stream = open_stream  # called in the stream's thread once the slot is ours

    async def __call__(self, scope, receive, send):
        import anyio
        from starlette.responses import StreamingResponse

        async with _worker_slot(self.bmw):
            chunks = _opened_lazily(self.open_stream)
            try:
                await StreamingResponse(chunks)(scope, receive, send)
            finally:
                if chunks.gi_frame is not None:  # not run to its end: cancelled, failed, or its client gone
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(chunks.close)


def _opened_lazily(open_stream):
    yield from open_stream()
