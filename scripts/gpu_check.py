"""On a CUDA machine: graphed speculative greedy == eager FastChat greedy on a tiny model."""
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastchat_spec  # noqa: E402

fastchat_spec.register()
from fastchat.model.model_adapter import get_generate_stream_function, load_model  # noqa: E402
from fastchat.serve.inference import generate_stream  # noqa: E402

from fastchat_spec.adapters.medusa import write_medusa_checkpoint  # noqa: E402
from tests import tiny  # noqa: E402

d = tempfile.mkdtemp()
tok = tiny.build_tokenizer(os.path.join(d, "tok"))
base_dir = tiny.build_llama(os.path.join(d, "vicuna-tiny"), tok)
ckpt = os.path.join(d, "medusa-tiny")
write_medusa_checkpoint(ckpt, tiny.oracle_medusa_heads(base_dir, 3), base_dir)
for dtype in (torch.float32, torch.bfloat16):
    model, tk = load_model(ckpt, device="cuda", dtype=dtype)
    base, btk = load_model(base_dir, device="cuda", dtype=dtype)
    stream = get_generate_stream_function(model, ckpt)
    same = 0
    prompts = [" ".join(tiny.corpus(3, seed=i)) for i in range(10)]
    for p in prompts:
        params = {"prompt": p, "temperature": 0.0, "max_new_tokens": 64, "echo": False}
        a = list(stream(model, tk, dict(params), "cuda", 1024))[-1]
        b = list(generate_stream(base, btk, dict(params), "cuda", 1024))[-1]
        same += a["text"] == b["text"]
    print(dtype, f"graphed greedy == FastChat greedy on {same}/{len(prompts)} prompts; last spec", a["spec"]["steps"], a["spec"]["tokens"])

# The device step (one graph per greedy step) against the host-driven step, same model and prompts.

from fastchat_spec.bench.run import run_engine  # noqa: E402
from fastchat_spec.generate import device_step  # noqa: E402

model, tk = load_model(ckpt, device="cuda", dtype=torch.bfloat16)
for p in prompts[:2]:
    ids = tk(p).input_ids
    for env in ("1", "0", "1", "0"):
        os.environ[device_step.DEVICE_STEP_ENV] = env
        for method in (None, "ar"):
            run = run_engine(model, ids, 128, 0.0, tk.eos_token_id, method=method)
            print(f"device_step={env} method={method or 'medusa'}: {run.tokens} tokens, {run.steps} steps, "
                  f"{1000 * run.seconds / run.steps:.3f} ms/step, {run.tok_s:.0f} tok/s, ids {run.text_ids[:8]}")
