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
    """Under pydantic v2, ``chunk.json(exclude_unset=True, ensure_ascii=False)`` raises TypeError."""
    import pydantic

    if int(pydantic.VERSION.split(".")[0]) < 2:
        return

    def json(self, **kwargs):
        kwargs.pop("ensure_ascii", None)  # model_dump_json already writes UTF-8 as is
        return self.model_dump_json(**kwargs)

    for value in vars(protocol).values():
        if isinstance(value, type) and issubclass(value, pydantic.BaseModel) and value.__module__ == protocol.__name__:
            value.json = json


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
    """Patch ``ModelWorker`` when its class statement runs, wherever its module lives (also __main__)."""
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
    """Forward our ``spec`` statistics through the worker's stream.

    FastChat's ``generate_stream_gate`` copies only the keys it knows. This
    version keeps its behaviour (seed, error codes and messages) and also
    passes ``spec`` along; FastChat's own clients ignore the extra key.
    """
    if getattr(worker_cls.generate_stream_gate, _WRAPPED, False):
        return
    import json

    import torch

    def generate_stream_gate(self, params):
        self.call_ct += 1
        try:
            if self.seed is not None:
                model_worker.set_seed(self.seed)
            for output in self.generate_stream_func(self.model, self.tokenizer, params, self.device,
                                                    self.context_len, self.stream_interval):
                ret = {"text": output["text"], "error_code": 0}
                for key in ("usage", "finish_reason", "logprobs", "spec"):
                    if key in output:
                        ret[key] = output[key]
                yield json.dumps(ret).encode() + b"\0"
        except torch.cuda.OutOfMemoryError as e:
            ret = {"text": f"{model_worker.SERVER_ERROR_MSG}\n\n({e})",
                   "error_code": model_worker.ErrorCode.CUDA_OUT_OF_MEMORY}
            yield json.dumps(ret).encode() + b"\0"
        except (ValueError, RuntimeError, FileNotFoundError) as e:
            ret = {"text": f"{model_worker.SERVER_ERROR_MSG}\n\n({e})",
                   "error_code": model_worker.ErrorCode.INTERNAL_ERROR}
            yield json.dumps(ret).encode() + b"\0"

    generate_stream_gate.__doc__ = worker_cls.generate_stream_gate.__doc__
    setattr(generate_stream_gate, _WRAPPED, True)
    worker_cls.generate_stream_gate = generate_stream_gate


def _rebind(name: str, old, new) -> None:
    """Replace names already bound by ``from ... import name`` in loaded FastChat modules."""
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("fastchat.") and getattr(mod, name, None) is old:
            setattr(mod, name, new)
