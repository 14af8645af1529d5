"""What the import hook does to FastChat 0.2.36 once its modules are imported.

Each function receives the freshly executed module and is idempotent.
"""
from __future__ import annotations

import functools
import sys

_WRAPPED = "__fastchat_spec_wrapped__"


def patch_utils(utils) -> None:
    """``get_context_length`` raises KeyError 'factor' on a dict rope_scaling without it."""
    original = utils.get_context_length
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def get_context_length(config):
        rope = getattr(config, "rope_scaling", None)
        factor = 1
        if isinstance(rope, dict):
            factor = rope.get("factor") or 1
        elif rope:
            factor = getattr(rope, "factor", 1) or 1
        for key in utils.SEQUENCE_LENGTH_KEYS:
            value = getattr(config, key, None)
            if value is not None:
                return int(factor * value)
        return 2048

    setattr(get_context_length, _WRAPPED, True)
    utils.get_context_length = get_context_length
    _rebind("get_context_length", original, get_context_length)


def patch_openai_protocol(protocol) -> None:
    """Streaming under pydantic v2, and requests FastChat's API server would answer with a 500 or ignore.

    ``chunk.json(exclude_unset=True, ensure_ascii=False)`` raises TypeError
    under pydantic v2. The request checks live in the request models because
    ``python -m fastchat.serve.openai_api_server`` runs the server as
    ``__main__``, where no import hook sees its functions; a failed check is
    answered by FastChat's own handler: HTTP 400, ``ErrorCode.VALIDATION_TYPE_ERROR``.
    """
    import pydantic

    if int(pydantic.VERSION.split(".")[0]) < 2:
        return
    if not getattr(protocol.ChatCompletionRequest, _WRAPPED, False):
        protocol.ChatCompletionRequest = _checked_chat_request(protocol.ChatCompletionRequest)
        protocol.CompletionRequest = _checked_completion_request(protocol.CompletionRequest)

    def json(self, **kwargs):
        kwargs.pop("ensure_ascii", None)  # model_dump_json already writes UTF-8 as is
        return self.model_dump_json(**kwargs)

    for value in vars(protocol).values():
        if isinstance(value, type) and issubclass(value, pydantic.BaseModel) and value.__module__ == protocol.__name__:
            value.json = json


CHAT_ROLES = ("system", "user", "assistant")  # the roles FastChat's get_gen_params knows


def _checked_chat_request(base):
    """``ChatCompletionRequest`` that refuses empty conversations, unknown roles, lone surrogates and logprobs."""
    import pydantic

    class ChatCompletionRequest(base):
        # OpenAI's chat logprobs; FastChat 0.2.36 would drop them silently.
        logprobs: bool | None = None
        top_logprobs: int | None = None

        @pydantic.field_validator("messages")
        @classmethod
        def _a_conversation(cls, messages):
            if isinstance(messages, list):
                _check_messages(messages)
            else:
                _check_texts("messages", messages)
            return messages

        @pydantic.field_validator("logprobs", "top_logprobs")
        @classmethod
        def _no_chat_logprobs(cls, value, info):
            if value:
                raise ValueError(f"{info.field_name} is not served by FastChat 0.2.36's /v1/chat/completions; "
                                 "/v1/completions takes logprobs")
            return value

    return _as_protocol_class(ChatCompletionRequest, base)


def _checked_completion_request(base):
    """``CompletionRequest`` that refuses an empty prompt list and lone surrogates."""
    import pydantic

    class CompletionRequest(base):
        @pydantic.field_validator("prompt")
        @classmethod
        def _a_prompt(cls, prompt):
            if isinstance(prompt, list) and not prompt:
                raise ValueError("prompt is an empty list; send a string or a list of strings")
            _check_texts("prompt", prompt)
            return prompt

    return _as_protocol_class(CompletionRequest, base)


def _as_protocol_class(cls, base):
    cls.__module__, cls.__qualname__, cls.__doc__ = base.__module__, base.__qualname__, base.__doc__
    setattr(cls, _WRAPPED, True)
    return cls


def _check_messages(messages: list) -> None:
    if not messages:
        raise ValueError("messages is empty; send at least one message")
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise ValueError(f"messages[{i}].role is {role!r}; use one of {', '.join(CHAT_ROLES)}")
        if "content" not in message:
            raise ValueError(f"messages[{i}] has no content")
        _check_texts(f"messages[{i}].content", message["content"])


def _check_texts(name: str, value) -> None:
    """Lone surrogates (half an emoji's UTF-16 pair) would make the worker's tokenizer raise."""
    from fastchat_spec.generate.request import check_text

    texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    for item in texts:
        text = item.get("text") if isinstance(item, dict) else item  # multimodal content parts carry "text"
        if isinstance(text, str):
            check_text(name, text)


def patch_uvicorn(uvicorn) -> None:
    """``python -m fastchat.serve.openai_api_server`` is __main__: patch it as it starts serving."""
    original = uvicorn.run
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def run(*args, **kwargs):
        from fastchat_spec import api_dispatch

        main = sys.modules.get("__main__")
        if api_dispatch.is_fastchat_api_server(main):
            api_dispatch.patch_api_server(main)
        return original(*args, **kwargs)

    setattr(run, _WRAPPED, True)
    uvicorn.run = run


def patch_model_adapter(model_adapter) -> None:
    """Put our adapters first and route speculative models to our generate_stream."""
    from fastchat_spec.adapters import adapter_classes

    ours = adapter_classes()
    model_adapter.model_adapters[:] = [a for a in model_adapter.model_adapters if type(a) not in ours]
    model_adapter.model_adapters[:0] = [cls() for cls in ours]
    model_adapter.get_model_adapter.cache_clear()
    _patch_get_model_adapter(model_adapter)

    original = model_adapter.get_generate_stream_function
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def get_generate_stream_function(model, model_path):
        from fastchat_spec.spec_model import is_speculative

        if is_speculative(model):
            from fastchat_spec.generate.stream import generate_stream

            return generate_stream
        return original(model, model_path)

    setattr(get_generate_stream_function, _WRAPPED, True)
    model_adapter.get_generate_stream_function = get_generate_stream_function
    _rebind("get_generate_stream_function", original, get_generate_stream_function)


def _patch_get_model_adapter(model_adapter) -> None:
    """Checkpoint contents beat folder names.

    FastChat tries every adapter on the folder's base name before the full
    path, so ``.../vicuna-medusa-heads`` would go to its Vicuna adapter. A
    folder that one of our adapters recognises by its config is ours.
    """
    original = model_adapter.get_model_adapter
    if getattr(original, _WRAPPED, False):
        return
    import os

    from fastchat_spec.adapters.base import SpecAdapter

    @functools.lru_cache(maxsize=None)
    def get_model_adapter(model_path: str):
        if os.path.isdir(model_path):
            for adapter in model_adapter.model_adapters:
                if isinstance(adapter, SpecAdapter) and adapter.match(model_path):
                    return adapter
        return original(model_path)

    def cache_clear():
        get_model_adapter.__wrapped_cache_clear__()
        original.cache_clear()

    get_model_adapter.__wrapped_cache_clear__ = get_model_adapter.cache_clear
    get_model_adapter.cache_clear = cache_clear
    get_model_adapter.__doc__ = original.__doc__
    setattr(get_model_adapter, _WRAPPED, True)
    model_adapter.get_model_adapter = get_model_adapter
    _rebind("get_model_adapter", original, get_model_adapter)


def patch_model_worker(model_worker) -> None:
    _patch_worker_class(model_worker.ModelWorker, model_worker)


def patch_base_model_worker(base_model_worker) -> None:
    """The worker app's endpoints, and ``ModelWorker`` when its class statement runs, wherever its module
    lives (``python -m fastchat.serve.model_worker`` runs it as __main__; this module is always imported)."""
    from fastchat_spec.worker_gate import patch_worker_endpoints

    patch_worker_endpoints(base_model_worker)
    base = base_model_worker.BaseModelWorker
    if getattr(base, _WRAPPED, False):
        return

    def __init_subclass__(cls, **kwargs):
        super(base, cls).__init_subclass__(**kwargs)
        if cls.__name__ == "ModelWorker" and hasattr(cls, "generate_stream_gate"):
            _patch_worker_class(cls, sys.modules[cls.__module__])

    base.__init_subclass__ = classmethod(__init_subclass__)
    setattr(base, _WRAPPED, True)


def _patch_worker_class(worker_cls, model_worker) -> None:
    """Forward our ``spec`` statistics through the worker's stream, and answer every failure.

    FastChat's ``generate_stream_gate`` copies only the keys it knows and
    catches only ValueError and RuntimeError. This version keeps its
    behaviour (seed, error codes and messages) and also passes ``spec``
    along (FastChat's own clients ignore it); a request we refuse gets its
    own error code and reason, and any other exception an error chunk too.
    """
    if getattr(worker_cls.generate_stream_gate, _WRAPPED, False):
        return
    import json
    import logging

    import torch

    from fastchat_spec.generate.prompt_ids import prompt_ids
    from fastchat_spec.generate.request import RequestError
    from fastchat_spec.generate.stream import LAST_CHUNK_ONLY, generate_stream as spec_generate_stream

    logger = logging.getLogger("model_worker")  # FastChat's worker logger (build_logger)

    def error(text: str, error_code: int) -> dict:
        return {"text": text, "error_code": int(error_code)}

    def outputs(self, params, stream_interval: int):
        """The worker's answers to one request as dicts (FastChat's chunk fields), or one error."""
        self.call_ct += 1
        try:
            if self.seed is not None:
                model_worker.set_seed(self.seed)
            for output in self.generate_stream_func(self.model, self.tokenizer, params, self.device,
                                                    self.context_len, stream_interval):
                ret = {"text": output["text"], "error_code": 0}
                for key in ("usage", "finish_reason", "logprobs", "spec"):
                    if key in output:
                        ret[key] = output[key]
                yield ret
        except torch.cuda.OutOfMemoryError as e:
            yield error(f"{model_worker.SERVER_ERROR_MSG}\n\n({e})", model_worker.ErrorCode.CUDA_OUT_OF_MEMORY)
        except RequestError as e:  # the client's to fix: no "network error, regenerate" banner
            yield error(str(e), e.error_code)
        except Exception as e:  # whatever one request does, the worker answers it and keeps serving
            logger.exception("generate_stream failed")
            yield error(f"{model_worker.SERVER_ERROR_MSG}\n\n({type(e).__name__}: {e})",
                        model_worker.ErrorCode.INTERNAL_ERROR)

    def generate_stream_gate(self, params):
        for ret in outputs(self, params, self.stream_interval):
            yield json.dumps(ret).encode() + b"\0"

    def generate_gate(self, params):
        """The non-streamed answer: the last chunk. Our decoder is asked for that chunk alone (a stream
        interval past any answer), so no chunk before it is built, encoded to JSON and read back."""
        interval = LAST_CHUNK_ONLY if self.generate_stream_func is spec_generate_stream else self.stream_interval
        ret = None
        for ret in outputs(self, params, interval):
            pass
        return ret

    original_count_token = worker_cls.count_token

    def count_token(self, params):
        """FastChat's count; the ids are kept for the request for this prompt that usually follows."""
        try:
            return {"count": len(prompt_ids(self.tokenizer, params["prompt"])), "error_code": 0}
        except TypeError:  # FastChat's own fallback (a tokenizer that is not callable on text)
            return original_count_token(self, params)

    generate_stream_gate.__doc__ = worker_cls.generate_stream_gate.__doc__
    setattr(generate_stream_gate, _WRAPPED, True)
    worker_cls.generate_stream_gate = generate_stream_gate
    worker_cls.generate_gate = generate_gate
    worker_cls.count_token = count_token
    _patch_worker_engine(worker_cls)


def _patch_worker_engine(worker_cls) -> None:
    """Size the engine loop's batch by ``--limit-worker-concurrency``, capture its graphs at load,
    and report its slots in ``/worker_get_status`` (next to FastChat's queue_length)."""
    import inspect

    from fastchat_spec.generate import loop
    from fastchat_spec.spec_model import is_speculative, split_base

    original_init, original_status = worker_cls.__init__, worker_cls.get_status
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        limit = signature.bind(self, *args, **kwargs).arguments.get("limit_worker_concurrency")
        loop.configure(slots=limit)
        original_init(self, *args, **kwargs)
        if is_speculative(self.model) and not split_base(self.model):  # a split base decodes unsped, loop-less
            loop.engine_for(self.model, self.context_len).warm_up()

    @functools.wraps(original_status)
    def get_status(self):
        status = original_status(self)
        engines = loop.loops_of(self.model) if is_speculative(getattr(self, "model", None)) else []
        if engines:
            status["spec_engine"] = [engine.status() for engine in engines]
        return status

    worker_cls.__init__ = __init__
    worker_cls.get_status = get_status


def _rebind(name: str, old, new) -> None:
    """Replace names already bound by ``from ... import name`` in loaded FastChat modules."""
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("fastchat.") and getattr(mod, name, None) is old:
            setattr(mod, name, new)
