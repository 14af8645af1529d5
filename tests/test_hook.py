"""The import hook: lazy, switchable, leaves plain models alone, and fixes two FastChat bugs.

Fresh interpreters (subprocesses with this checkout on PYTHONPATH) show what
a user's ``python -m fastchat.serve...`` sees: the ``.pth`` file arms the hook
at startup, and nothing heavy happens until FastChat's modules are imported.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import pytest

from tests.conftest import ROOT


def run_python(code: str, env: dict, disable: bool = False, cwd: str = ROOT) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON line last."""
    env = dict(env)
    if disable:
        env["FASTCHAT_SPEC_DISABLE"] = "1"
    else:
        env.pop("FASTCHAT_SPEC_DISABLE", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=cwd, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hook_is_armed_at_startup_and_imports_nothing_heavy(subprocess_env):
    out = run_python("""
        import json, sys
        startup = {"hook": "fastchat_spec_hook" in sys.modules,
                   "spec": any(m.startswith("fastchat_spec.") or m == "fastchat_spec" for m in sys.modules),
                   "torch": "torch" in sys.modules}
        import fastchat.constants
        constants = {"spec": any(m == "fastchat_spec" or m.startswith("fastchat_spec.") for m in sys.modules),
                     "torch": "torch" in sys.modules}
        import fastchat.utils  # patched (get_context_length) without importing torch
        utils = {"torch": "torch" in sys.modules}
        import fastchat.model.model_adapter as ma
        import fastchat_spec
        print(json.dumps({"startup": startup, "constants": constants, "utils": utils,
                          "adapters": [type(a).__module__.split(".")[0] + ":" + type(a).__name__
                                       for a in ma.model_adapters],
                          "package": fastchat_spec.__file__}))
    """, subprocess_env)
    assert out["startup"] == {"hook": True, "spec": False, "torch": False}
    assert out["constants"] == {"spec": False, "torch": False}
    assert out["utils"] == {"torch": False}
    ours = [a for a in out["adapters"] if a.startswith("fastchat_spec:")]
    assert "fastchat_spec:MedusaAdapter" in ours
    assert out["adapters"][: len(ours)] == ours, "our adapters must come before FastChat's own"
    assert out["package"].startswith(ROOT), "the checkout on PYTHONPATH must win over the installed copy"


def test_disable_leaves_fastchat_stock(subprocess_env, base_dir, medusa_dir):
    out = run_python(f"""
        import json, sys
        import fastchat.model.model_adapter as ma
        from fastchat.model.model_adapter import get_generate_stream_function, get_model_adapter, load_model
        model, tok = load_model({base_dir!r}, device="cpu")
        stream = get_generate_stream_function(model, {base_dir!r})
        print(json.dumps({{
            "ours": [type(a).__name__ for a in ma.model_adapters if type(a).__module__.startswith("fastchat_spec")],
            "imported": sorted(m for m in sys.modules if m == "fastchat_spec" or m.startswith("fastchat_spec.")),
            "medusa_adapter": type(get_model_adapter({medusa_dir!r})).__name__,
            "model": type(model).__name__,
            "stream": stream.__module__ + "." + stream.__name__,
        }}))
    """, subprocess_env, disable=True)
    assert out["ours"] == [] and out["imported"] == []
    assert out["medusa_adapter"] != "MedusaAdapter"
    assert out["model"] == "LlamaForCausalLM"
    assert out["stream"] == "fastchat.serve.inference.generate_stream"


def test_plain_model_gets_fastchats_generate_stream(base_dir):
    from fastchat.model.model_adapter import get_generate_stream_function, load_model
    from fastchat.serve.inference import generate_stream

    model, _ = load_model(base_dir, device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert get_generate_stream_function(model, base_dir) is generate_stream


def test_speculative_model_gets_ours(medusa_dir):
    from fastchat.model.model_adapter import get_generate_stream_function, load_model

    from fastchat_spec.generate.stream import generate_stream

    model, _ = load_model(medusa_dir, device="cpu")
    assert get_generate_stream_function(model, medusa_dir) is generate_stream


def test_registering_twice_changes_nothing():
    import fastchat.model.model_adapter as ma

    import fastchat_spec

    before = [type(a) for a in ma.model_adapters]
    stream_fn = ma.get_generate_stream_function
    fastchat_spec.register()
    assert [type(a) for a in ma.model_adapters] == before
    assert ma.get_generate_stream_function is stream_fn
    assert sum(type(a).__name__ == "MedusaAdapter" for a in ma.model_adapters) == 1


# -- the two FastChat fixes ----------------------------------------------------------------

STREAM_CHUNK = """
from fastchat.protocol.openai_api_protocol import (ChatCompletionResponseStreamChoice,
                                                   ChatCompletionStreamResponse, DeltaMessage)
chunk = ChatCompletionStreamResponse(model="m", choices=[ChatCompletionResponseStreamChoice(
    index=0, delta=DeltaMessage(content="caf\\u00e9 \\u2713"))])
"""  # a chunk as the API server builds it (finish_reason left unset), for a fresh interpreter


def _stream_chunk():
    from fastchat.protocol.openai_api_protocol import (
        ChatCompletionResponseStreamChoice,
        ChatCompletionStreamResponse,
        DeltaMessage,
    )

    return ChatCompletionStreamResponse(model="m", choices=[ChatCompletionResponseStreamChoice(
        index=0, delta=DeltaMessage(content="caf\u00e9 \u2713"))])


def test_pydantic_v2_json_fix():
    """The API server streams with ``chunk.json(exclude_unset=True, ensure_ascii=False)``."""
    chunk = _stream_chunk()
    text = chunk.json(exclude_unset=True, ensure_ascii=False)
    data = json.loads(text)
    assert data["choices"][0]["delta"] == {"content": "café ✓"}
    assert "café ✓" in text  # UTF-8 as is, as ensure_ascii=False asks
    assert "finish_reason" not in data["choices"][0]  # exclude_unset honoured
    assert "null" not in chunk.json(exclude_none=True)


def test_without_the_hook_fastchat_streaming_breaks_under_pydantic_v2(subprocess_env):
    """Documents why the fix exists: stock FastChat 0.2.36 + pydantic 2 raises here."""
    out = run_python(STREAM_CHUNK + """
import json
try:
    chunk.json(exclude_unset=True, ensure_ascii=False)
    print(json.dumps({"error": None}))
except TypeError as e:
    print(json.dumps({"error": str(e)}))
""", subprocess_env, disable=True)
    assert out["error"] and "dumps_kwargs" in out["error"]


@pytest.mark.parametrize("rope_scaling,expected", [
    (None, 1024),
    ({"type": "dynamic"}, 1024),  # no factor: stock FastChat raises KeyError('factor')
    ({"type": "dynamic", "factor": 2.0}, 2048),
    ({"rope_type": "linear", "factor": 4}, 4096),
])
def test_get_context_length_with_dict_rope_scaling(rope_scaling, expected):
    from fastchat.utils import get_context_length

    config = types.SimpleNamespace(rope_scaling=rope_scaling, max_position_embeddings=1024)
    assert get_context_length(config) == expected


def test_get_context_length_fix_reaches_modules_that_imported_it_by_name(subprocess_env, tmp_path):
    """FastChat's worker does ``from fastchat.utils import get_context_length``.

    In a subprocess: importing the worker module opens a log file in LOGDIR.
    """
    out = run_python("""
        import json, sys, types
        import fastchat.serve.model_worker as model_worker
        import fastchat.utils
        config = types.SimpleNamespace(rope_scaling={"type": "dynamic"}, max_position_embeddings=512)
        # FastChat's logger has taken over sys.stdout: write to the real one.
        sys.__stdout__.write(json.dumps({"same": model_worker.get_context_length is fastchat.utils.get_context_length,
                                         "length": model_worker.get_context_length(config)}) + "\\n")
    """, {**subprocess_env, "LOGDIR": str(tmp_path)}, cwd=str(tmp_path))
    assert out == {"same": True, "length": 512}


def test_without_the_hook_rope_scaling_without_factor_raises(subprocess_env):
    out = run_python("""
import json, types
from fastchat.utils import get_context_length
try:
    get_context_length(types.SimpleNamespace(rope_scaling={"type": "dynamic"}, max_position_embeddings=1024))
    print(json.dumps({"error": None}))
except KeyError as e:
    print(json.dumps({"error": repr(e)}))
""", subprocess_env, disable=True)
    assert out["error"] == "KeyError('factor')"


def test_a_base_split_over_devices_is_served_by_fastchats_decoder(medusa_dir, base_dir, monkeypatch, caplog):
    """FastChat's --num-gpus 2 spreads the base over GPUs (accelerate's hf_device_map); the engine keeps its KV rows
    and graphs on one device. Such a worker must start, say why it is unsped, and answer with FastChat's text."""
    from fastchat.model.model_adapter import get_generate_stream_function, load_model
    from fastchat.serve.inference import generate_stream as fastchat_generate_stream

    from fastchat_spec.adapters.base import warned_if_split
    from fastchat_spec.fastchat_patches import _patch_worker_engine
    from fastchat_spec.generate import loop
    from tests.tiny import CONTEXT, PROMPTS, greedy

    model, tok = load_model(medusa_dir, device="cpu")
    model.base.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.norm": 1,
                                "lm_head": 1}  # what accelerate records for a base split over two GPUs
    with caplog.at_level("WARNING", logger="fastchat_spec"):
        warned_if_split(model, medusa_dir)
    assert "split over 0, 1" in caplog.text and "FastChat's own decoder" in caplog.text

    class Worker:  # FastChat's worker as the hook patches it: the engine loop is warmed up at load
        def __init__(self, model, limit_worker_concurrency=5):
            self.model, self.context_len = model, CONTEXT

        def get_status(self):
            return {}

    monkeypatch.setitem(loop._SLOTS, "default", None)
    _patch_worker_engine(Worker)
    Worker(model)
    stream = get_generate_stream_function(model, medusa_dir)
    ours = list(stream(model, tok, greedy(PROMPTS[0], 24), "cpu", CONTEXT))
    base, base_tok = load_model(base_dir, device="cpu")
    stock = list(fastchat_generate_stream(base, base_tok, greedy(PROMPTS[0], 24), "cpu", CONTEXT))
    assert [c["text"] for c in ours] == [c["text"] for c in stock]
    assert ours[-1]["spec"]["steps"] == ours[-1]["spec"]["tokens"]  # one token per step, and said so
    assert loop.loops_of(model) == []  # no engine loop, no KV rows or graphs on one device
