"""FastChat's OpenAI API server: requests go only to live workers, over kept-alive connections.

FastChat 0.2.36's ``openai_api_server`` asks the controller for a worker
address per request and sends the request there. After a worker dies
(``kill -9``, a crash, a lost machine) the controller keeps handing out its
address until the worker's heart-beat expires (90 s by default), and every
request sent there fails with HTTP 500. With several workers behind one
controller, the way users scale past one GPU, that loses requests the
surviving workers could have served.

Here the API server's ``get_worker_address`` first checks that the worker it
was given answers (one status call on the worker's own address, a
millisecond on a local network); if it does not, it asks the controller to
drop unreachable workers (``/refresh_all_workers``) and takes the next
address.

Its ``generate_completion_stream`` also opens a new ``httpx.AsyncClient`` for
every streamed completion, and each one builds a TLS context from certifi's
bundle (about 20 ms, even for an http:// worker) in the server's only thread,
where every other request waits. Here one client serves every stream
(``shared_stream_client``); each stream still opens its own connection, as before.

Before a chat completion is generated, the server makes five more HTTP calls
(the controller's model list and a worker address, the liveness check above,
the worker's ``/model_details`` and ``/count_token``), and its ``fetch_remote``
opened a new ``aiohttp.ClientSession`` (a connector and a TCP connection) for
each one. Here they share one session per event loop (``shared_session``)
that keeps connections alive for ``KEEPALIVE_S``, shorter than the servers'
own idle timeout (uvicorn closes an idle connection after 5 s), so the client
always drops an idle connection before a server would. A look-up that still
meets a connection the other side closed is sent once more on a new one.

The server runs as ``__main__``, so these patches are applied when it calls
``uvicorn.run`` (see ``fastchat_patches.patch_uvicorn``).
"""
from __future__ import annotations

import asyncio
import functools
import json
import weakref

import aiohttp
from fastchat.constants import ErrorCode

ALIVE_TIMEOUT_S = 2.0  # a live worker's status endpoint answers in milliseconds, even while it generates
ATTEMPTS = 3  # addresses tried before the last one is used as it is (FastChat then reports the failure)
KEEPALIVE_S = 2.0  # idle connections are closed by this side first (uvicorn's own idle timeout is 5 s)
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=3 * 3600)  # FastChat's fetch_remote timeout
# Calls that only read (sent again on a fresh connection when a kept-alive one turns out closed).
LOOK_UPS = ("/list_models", "/get_worker_address", "/model_details", "/count_token", "/worker_get_status",
            "/worker_get_conv_template")
_WRAPPED = "__fastchat_spec_wrapped__"


def is_fastchat_api_server(module) -> bool:
    return (getattr(module, "__file__", "") or "").replace("\\", "/").endswith("fastchat/serve/openai_api_server.py")


def patch_api_server(main) -> None:
    """Wrap the API server module's ``get_worker_address`` (idempotent)."""
    original = main.get_worker_address
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    async def get_worker_address(model_name: str) -> str:
        address = await original(model_name)
        for _ in range(ATTEMPTS - 1):
            if await answers(address):
                return address
            main.logger.warning(f"worker {address} does not answer: asking the controller to drop it")
            await drop_unreachable_workers(main.app_settings.controller_address)
            address = await original(model_name)  # raises FastChat's "No available worker" when none is left
        return address

    setattr(get_worker_address, _WRAPPED, True)
    main.get_worker_address = get_worker_address
    patch_stream_client(main)
    patch_fetch_remote(main)


def patch_fetch_remote(main) -> None:
    """``fetch_remote`` over the shared session (idempotent): FastChat's answers, its errors and timeout."""
    if getattr(main.fetch_remote, _WRAPPED, False):
        return

    async def fetch_remote(url, pload=None, name=None):
        output = await post_read(url, pload)
        if isinstance(output, str):  # FastChat's answer to a status other than 200
            return output
        if name is not None:
            res = json.loads(output)
            return res[name] if name != "" else res
        return output

    fetch_remote.__doc__ = main.fetch_remote.__doc__
    setattr(fetch_remote, _WRAPPED, True)
    main.fetch_remote = fetch_remote


async def post_read(url: str, pload=None, timeout=FETCH_TIMEOUT):
    """POST ``pload`` as JSON; the body, or FastChat's error JSON (a str) when the status is not 200."""
    for attempt in (1, 2):
        try:
            async with shared_session().post(url, json=pload, timeout=timeout) as response:
                if response.status != 200:
                    return json.dumps({"text": f"{response.reason}", "error_code": ErrorCode.INTERNAL_ERROR})
                return await response.read()
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):  # closed or reset by the other side
            if attempt == 2 or not url.endswith(LOOK_UPS):
                raise


_SESSIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # event loop -> its session


def shared_session() -> aiohttp.ClientSession:
    """The running event loop's session for calls to the controller and workers (a session is bound to
    one loop), with idle connections kept ``KEEPALIVE_S``."""
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S, limit=0)
        session = _SESSIONS[loop] = aiohttp.ClientSession(connector=connector, timeout=FETCH_TIMEOUT)
    return session


def patch_stream_client(main) -> None:
    """``generate_completion_stream`` with one shared HTTP client (idempotent).

    The same request, headers, timeout and chunks as FastChat's: the worker's
    NUL-separated JSON chunks, read as they arrive.
    """
    if getattr(main.generate_completion_stream, _WRAPPED, False):
        return

    async def generate_completion_stream(payload: dict, worker_addr: str):
        client = shared_stream_client()
        async with client.stream("POST", worker_addr + "/worker_generate_stream", headers=main.headers,
                                 json=payload, timeout=main.WORKER_API_TIMEOUT) as response:
            pending = b""
            async for raw in response.aiter_raw():
                pending += raw
                *chunks, pending = pending.split(b"\0")
                for chunk in chunks:
                    if chunk:
                        yield json.loads(chunk.decode())

    generate_completion_stream.__doc__ = main.generate_completion_stream.__doc__
    setattr(generate_completion_stream, _WRAPPED, True)
    main.generate_completion_stream = generate_completion_stream


_CLIENTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # event loop -> its client


def shared_stream_client():
    """The running event loop's client for worker streams, built once (an httpx client is bound to
    one loop). No kept-alive connections: each stream connects anew, as FastChat's own client did, so
    a worker that restarted or closed an idle connection never meets a stale one."""
    import httpx

    loop = asyncio.get_running_loop()
    client = _CLIENTS.get(loop)
    if client is None:
        client = _CLIENTS[loop] = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))
    return client


async def answers(worker_address: str) -> bool:
    try:
        output = await post_read(worker_address + "/worker_get_status",
                                 timeout=aiohttp.ClientTimeout(total=ALIVE_TIMEOUT_S))
        return not isinstance(output, str)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def drop_unreachable_workers(controller_address: str) -> None:
    """The controller re-checks every worker now and forgets those that do not answer."""
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(controller_address + "/refresh_all_workers") as response:
                await response.read()
    except (aiohttp.ClientError, TimeoutError, OSError):
        pass  # the controller is down too: FastChat's own error follows on the next call
