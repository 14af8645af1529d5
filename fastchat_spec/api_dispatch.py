"""FastChat's OpenAI API server sends no request to a worker that is gone.

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
address. The server runs as ``__main__``, so the patch is applied when it
calls ``uvicorn.run`` (see ``fastchat_patches.patch_uvicorn``).
"""
from __future__ import annotations

import functools

import aiohttp

ALIVE_TIMEOUT_S = 2.0  # a live worker's status endpoint answers in milliseconds, even while it generates
ATTEMPTS = 3  # addresses tried before the last one is used as it is (FastChat then reports the failure)
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


async def answers(worker_address: str) -> bool:
    try:
        timeout = aiohttp.ClientTimeout(total=ALIVE_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(worker_address + "/worker_get_status") as response:
                return response.status == 200
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
