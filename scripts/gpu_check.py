"""On a CUDA machine: every method's graphed path, alone and 16 at a time, against FastChat's greedy text.

Every method of the registry (``fastchat_spec/methods.py``) is checked on each
of its tiny checkpoints (``tests/tiny.py: TINY_CHECKPOINTS``: Medusa chains and
trees, Hydra and Hydra++, Chimera in both head layouts, CLLM Jacobi windows),
written by the method's own checkpoint writer and loaded on the device. Each
prompt is decoded
  1. by FastChat's own generate_stream on the base (the reference),
  2. by our generate_stream alone (one request in the engine loop),
  3. by our generate_stream from 16 threads at once (batched steps),
  4. 16 at once again, with sampled requests mixed in (greedy rows must not change),
  5. 16 at once again, two of them asking for logprobs (stepped on the host beside
     the batched step): every text as alone, and those logprobs FastChat's.
A method without a checkpoint of its own (our AR decoder) decodes 1. and 2. on
the first checkpoint through the engine directly. float32 must match everywhere;
bfloat16 agreement is reported. Sampled requests, 16 at a time, are checked for
their law: on a tiny base with peaked distributions and Medusa heads copying its
lm_head, the first three tokens of 1,536 sampled answers (temperature, top-p and
top-k set; the graphed sampled step) against the exact law under FastChat's own
logits processors, by total variation. Last, each method's first checkpoint is loaded
with FastChat's --load-8bit (its compressed base, float16) and decodes alone and
16 at a time: it must run; its agreement with FastChat on the same compressed
base is reported. The CPU suite cannot see these paths (CUDA
graphs, capture while other threads run).

Usage: python scripts/gpu_check.py [--device cuda|cpu] [--out result.json]
"""
import argparse
import json
import os
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # tests/ is not installed: the tiny checkpoints come from the checkout
import fastchat_spec  # noqa: E402

fastchat_spec.register()
from fastchat.model.model_adapter import get_generate_stream_function, load_model  # noqa: E402
from fastchat.serve.inference import generate_stream as fastchat_stream  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from fastchat_spec.generate.loop import engine_for  # noqa: E402
from fastchat_spec.methods import METHODS  # noqa: E402
from tests import tiny  # noqa: E402

MAX_NEW = 64
CLIENTS = 16
LOGPROBS_TOLERANCE = 1e-3  # float32: a verified tree and FastChat's one-token forward round differently
SAMPLED_RUNS = 1536
SAMPLED_TV_BOUND = 0.06  # tests/test_sampling.py's bound: sampling noise is ~0.03 at 1,500 runs


@dataclass
class Case:
    """One tiny checkpoint of one method, written to ``path``."""

    name: str  # method/checkpoint
    path: str
    request: dict = field(default_factory=dict)  # extra request keys (a Jacobi window)


def write_checkpoints(folder: str) -> tuple[str, list[Case], list[dict]]:
    """The tiny base, one case per tiny checkpoint of every method with a writer, and a failure
    for each method that has a writer but no tiny checkpoint."""
    tok = tiny.build_tokenizer(os.path.join(folder, "tok"))
    base_dir = tiny.build_llama(os.path.join(folder, "vicuna-tiny"), tok)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval().requires_grad_(False)
    cases, missing = [], []
    for method in METHODS.values():
        if method.writer is None:
            continue
        if not tiny.TINY_CHECKPOINTS.get(method.name):
            missing.append({"method": method.name, "error": "no tiny checkpoint in tests/tiny.py: TINY_CHECKPOINTS"})
        for checkpoint in tiny.TINY_CHECKPOINTS.get(method.name, []):
            # "-vicuna-": FastChat picks the base's adapter and template by this folder name, as for
            # the base (a bare name could fall back to matching the whole path: /tmp/tmpt... is "mpt").
            out = os.path.join(folder, f"{method.name}-vicuna-{checkpoint.name}")
            checkpoint.write(method.write_checkpoint, out, base_dir, base)
            cases.append(Case(f"{method.name}/{checkpoint.name}", out, dict(checkpoint.request)))
    return base_dir, cases, missing


def params(prompt: str, **extra) -> dict:
    return tiny.greedy(prompt, MAX_NEW, **extra)


def together(stream, model, tok, requests: list[dict], device: str) -> list[str]:
    """Each request's text, all of them sent to the engine loop at the same moment from their own threads."""
    return [last["text"] for last in together_last(stream, model, tok, requests, device)]


def together_last(stream, model, tok, requests: list[dict], device: str) -> list[dict]:
    """Each request's last chunk, all of them sent to the engine loop at the same moment from their own threads."""
    results = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def run(i):
        barrier.wait()
        results[i] = list(stream(model, tok, requests[i], device, tiny.CONTEXT))[-1]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def fastchat_texts(base_dir: str, prompts: list[str], device: str, dtype) -> list[str]:
    """FastChat's own greedy text on the plain base: the reference for every method."""
    base, tok = load_model(base_dir, device=device, dtype=dtype)
    return [list(fastchat_stream(base, tok, params(p), device, tiny.CONTEXT))[-1]["text"] for p in prompts]


def fastchat_logprobs(base_dir: str, prompts: list[str], device: str, dtype) -> list[dict]:
    """FastChat's own ``logprobs`` of its greedy answers on the plain base."""
    base, tok = load_model(base_dir, device=device, dtype=dtype)
    return [list(fastchat_stream(base, tok, params(p, logprobs=1), device, tiny.CONTEXT))[-1]["logprobs"]
            for p in prompts]


def logprobs_gap(ours: list[dict], theirs: list[dict]) -> float:
    """Largest difference of a token's logprob between two answers' ``logprobs``; inf when their tokens differ."""
    gap = 0.0
    for a, b in zip(ours, theirs):
        if a is None or a["tokens"] != b["tokens"]:
            return float("inf")
        gap = max([gap] + [abs(x - y) for x, y in zip(a["token_logprobs"], b["token_logprobs"])])
    return gap


def check_case(case: Case, prompts: list[str], reference: list[str], device: str, dtype, base_dir: str) -> dict:
    model, tok = load_model(case.path, device=device, dtype=dtype)
    stream = get_generate_stream_function(model, case.path)
    lasts = [list(stream(model, tok, params(p, **case.request), device, tiny.CONTEXT))[-1] for p in prompts]
    alone = [last["text"] for last in lasts]
    batch = together(stream, model, tok, [params(p, **case.request) for p in prompts], device)
    half = CLIENTS // 2
    mixed_requests = ([params(p, **case.request) for p in prompts[:half]]
                      + [params(p, temperature=0.8, **case.request) for p in prompts[half:]])
    mixed = together(stream, model, tok, mixed_requests, device)[:half]
    with_logprobs = together_last(stream, model, tok, [params(p, **case.request, **({"logprobs": 1} if i < 2 else {}))
                                                       for i, p in enumerate(prompts)], device)
    return {
        "method": case.name, "dtype": str(dtype),
        "tokens_per_step": round(sum(x["spec"]["tokens"] for x in lasts) / sum(x["spec"]["steps"] for x in lasts), 2),
        "alone_vs_fastchat": _rate(alone, reference),
        "batched16_vs_alone": _rate(batch, alone),
        "batched16_vs_fastchat": _rate(batch, reference),
        "greedy_next_to_sampled_vs_alone": _rate(mixed, alone[:half]),
        "next_to_logprobs_requests_vs_alone": _rate([x["text"] for x in with_logprobs], alone),
        "logprobs_max_gap_vs_fastchat": logprobs_gap([x["logprobs"] for x in with_logprobs[:2]],
                                                     fastchat_logprobs(base_dir, prompts[:2], device, dtype)),
        "loop": engine_for(model, tiny.CONTEXT).status(),
    }


def check_engine_method(method: str, case: Case, prompts: list[str], reference: list[str], device: str,
                        dtype) -> dict:
    """A method with no checkpoint of its own (``ar``): our engine decodes with it on ``case``'s model."""
    from fastchat_spec.bench.run import run_engine

    model, tok = load_model(case.path, device=device, dtype=dtype)
    runs = [run_engine(model, tok(p).input_ids, MAX_NEW, 0.0, tok.eos_token_id, method=method) for p in prompts]
    alone = [tok.decode(run.text_ids, skip_special_tokens=True) for run in runs]
    return {"method": f"{method} (on {case.name})", "dtype": str(dtype), "alone_vs_fastchat": _rate(alone, reference)}


def check_load_8bit(case: Case, base_dir: str, prompts: list[str], device: str) -> dict:
    """FastChat's --load-8bit: our engine on the compressed base, against FastChat's decoder on it."""
    base, base_tok = load_model(base_dir, device=device, load_8bit=True)
    reference = [list(fastchat_stream(base, base_tok, params(p), device, tiny.CONTEXT))[-1]["text"] for p in prompts]
    model, tok = load_model(case.path, device=device, load_8bit=True)
    stream = get_generate_stream_function(model, case.path)
    alone = [list(stream(model, tok, params(p, **case.request), device, tiny.CONTEXT))[-1]["text"] for p in prompts]
    batch = together(stream, model, tok, [params(p, **case.request) for p in prompts], device)
    return {"method": f"{case.name} --load-8bit", "dtype": "load_8bit",
            "alone_vs_fastchat_8bit": _rate(alone, reference), "batched16_vs_alone_8bit": _rate(batch, alone)}


def _rate(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(b)


def reported(name: str, dtype, check) -> dict:
    """``check()``'s result, or its error: every method is reported before the script fails."""
    try:
        result = check()
    except Exception as error:  # noqa: BLE001 - report every method, then fail
        result = {"method": name, "dtype": str(dtype), "error": repr(error)}
    print(json.dumps(result), flush=True)
    return result


def check_sampled_law(folder: str, tokenizer_dir: str, device: str) -> dict:
    """The sampled step under graphs, 16 requests at a time: the law of the first tokens against the exact one."""
    from fastchat_spec.adapters.medusa import write_medusa_checkpoint
    from tests import test_sampling as law

    base_dir = tiny.build_llama(os.path.join(folder, "vicuna-sharp"), tokenizer_dir, sharpen=20.0)
    ckpt = os.path.join(folder, "medusa-vicuna-sharp")
    write_medusa_checkpoint(ckpt, tiny.oracle_medusa_heads(base_dir, 3), base_dir)
    base, base_tok = load_model(base_dir, device="cpu")
    exact = law._exact_prefixes(base, base_tok)
    model, tok = load_model(ckpt, device=device)
    stream = get_generate_stream_function(model, ckpt)
    counts, runs = [None] * CLIENTS, SAMPLED_RUNS // CLIENTS

    def client(i):
        counts[i] = law._sample_prefixes(stream, model, tok, runs, seed=i)  # a recorder of its own per thread

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = Counter()
    for c in counts:
        seen.update(c)
    keep = {k for k, p in exact.items() if p >= 0.01}
    status = engine_for(model, tiny.CONTEXT).status()
    return {"method": "medusa/sharp sampled x16", "dtype": str(torch.float32),
            "impossible_outcomes": sum(v for k, v in seen.items() if k not in exact),
            "sampled_law_tv_vs_exact": round(law._tv(law._coarse(law._empirical(seen), keep),
                                                     law._coarse(exact, keep)), 4),
            "tv_bound": SAMPLED_TV_BOUND, "loop": status}


def check_all(base_dir: str, cases: list[Case], device: str) -> list[dict]:
    """Every case, then every method without a checkpoint of its own, in float32 and in bfloat16."""
    results = []
    prompts = [" ".join(tiny.corpus(3, seed=i)) for i in range(CLIENTS)]
    for dtype in (torch.float32, torch.bfloat16):
        reference = fastchat_texts(base_dir, prompts, device, dtype)
        for case in cases:
            results.append(reported(case.name, dtype, partial(check_case, case, prompts, reference, device, dtype,
                                                              base_dir)))
        for method in (m.name for m in METHODS.values() if m.writer is None):
            results.append(reported(method, dtype, partial(check_engine_method, method, cases[0], prompts, reference,
                                                           device, dtype)))
    firsts = {case.name.split("/")[0]: case for case in reversed(cases)}  # each method's first checkpoint
    for case in firsts.values():
        results.append(reported(case.name, "load_8bit", partial(check_load_8bit, case, base_dir, prompts, device)))
    return results


def failed(result: dict) -> bool:
    """Any error; in float32, a text that is not FastChat's or alone's, or logprobs past the tolerance."""
    if "error" in result:
        return True
    if "sampled_law_tv_vs_exact" in result:
        return result["impossible_outcomes"] > 0 or result["sampled_law_tv_vs_exact"] > SAMPLED_TV_BOUND
    if result["dtype"] != "torch.float32":
        return False
    rates = [v for k, v in result.items() if k.endswith(("fastchat", "alone")) and "gap" not in k]
    return any(v != 1.0 for v in rates) or result.get("logprobs_max_gap_vs_fastchat", 0.0) > LOGPROBS_TOLERANCE


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only smoke-tests this script")
    args = ap.parse_args()
    device = args.device
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        base_dir, cases, missing = write_checkpoints(folder)
        # The sampled law first: it is the quickest, and the newest path (a call cut short still reports it).
        results = [reported("medusa/sharp sampled x16", torch.float32,
                            partial(check_sampled_law, folder, os.path.join(folder, "tok"), device))]
        results += check_all(base_dir, cases, device)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0) if device == "cuda" else device,
                       "results": missing + results}, f, indent=2)
    bad = missing + [r for r in results if failed(r)]
    print("float32: every method exact alone and batched" if not bad else f"float32 FAILURES: {bad}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
