"""What a CLLM is judged by: Jacobi tokens per step on held-out prompts, and held-out perplexity.

The speed is greedy Jacobi decoding through the serving engine, exactly as
``python -m fastchat_spec.bench`` runs it: the model wrapped as a ``cllm``
``SpecModel`` (what the CLLM adapter hands FastChat), each prompt submitted to
its engine loop (``bench.run.run_engine``: the Jacobi proposer, the shared
verification and acceptance, FastChat's cut of long prompts, the answer cut
after the end-of-sequence token). Reported: ``tokens_per_step``, all prompts'
tokens over all their Jacobi steps (the prefill's token and forward left out;
1.0 = autoregressive), and ``median_tau``, the median of the per-prompt ratios
that the bench quotes as tau.

The held-out loss is the model's cross-entropy on the assistant turns of
held-out FastChat conversations (did consistency training keep its answers?).

Prompts: the first user turns of held-out conversations, optionally of one
domain (``fastchat_spec/train/domain.py``), each once, skipping those shorter
than ``data.MIN_PROTECTED_PROMPT_CHARS`` ("hi", "continue"), as the bench does.

Usage: ``python -m fastchat_spec.train.cllm_eval --help`` (any checkpoint FastChat
loads; a plain base is decoded with Jacobi windows as if it were a CLLM).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from contextlib import nullcontext
from typing import List, Optional, Sequence

import torch
from torch import nn

from fastchat_spec.train.dataset import IGNORE_TOKEN_ID, Collator


@torch.no_grad()
def heldout_loss(model: nn.Module, dataset, pad_token_id: int, batch_size: int = 8) -> dict:
    """Token-weighted cross-entropy of the assistant turns of held-out conversations, and its perplexity."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    collate = Collator(pad_token_id)
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    for start in tqdm(range(0, len(dataset), batch_size), desc="held-out loss", leave=False):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        with autocast:
            logits = model(input_ids=ids, use_cache=False).logits
        targets = labels[:, 1:]
        total += float(nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                                   ignore_index=IGNORE_TOKEN_ID, reduction="sum"))
        tokens += int((targets != IGNORE_TOKEN_ID).sum())
    model.train(was_training)
    loss = total / max(tokens, 1)
    return {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50.0)), 2), "tokens": tokens}


def heldout_prompts(conversations: Sequence[dict], template, limit: int, domain: str = "all") -> List[str]:
    """Up to ``limit`` distinct first user turns of ``domain``, in the template, ready to tokenize."""
    from fastchat_spec.train.data import MIN_PROTECTED_PROMPT_CHARS
    from fastchat_spec.train.domain import select

    prompts, seen = [], set()
    for conv in select(conversations, domain):
        turns = conv.get("conversations") or []
        if len(prompts) >= limit:
            break
        if not turns or turns[0].get("from") != "human":
            continue
        text = turns[0]["value"]
        if len(text) < MIN_PROTECTED_PROMPT_CHARS or text in seen:
            continue
        seen.add(text)
        chat = template.copy()
        chat.append_message(chat.roles[0], text)
        chat.append_message(chat.roles[1], None)
        prompts.append(chat.get_prompt())
    return prompts


def as_cllm(model: nn.Module, window: Optional[int] = None, lookup: Optional[int] = 0):
    """A fresh ``cllm`` SpecModel (what the CLLM adapter hands FastChat) over ``model``'s causal LM.

    ``model``: a plain causal LM (window: ``window``, else 16) or a CLLM
    SpecModel (window: ``window``, else its own). ``lookup``: the length of the
    branch of guesses copied from the context (``proposers/jacobi.py``); 0, the
    default here, measures the Jacobi window alone, what consistency training
    changes; None, the served default. A fresh wrapper gets its own engine
    loop, which ``jacobi_speed`` stops when it is done.
    """
    from fastchat_spec.generate.proposers.jacobi import DEFAULT_WINDOW, LOOKUP_OPTION
    from fastchat_spec.spec_model import SpecConfig, SpecModel, is_speculative

    options = {} if lookup is None else {LOOKUP_OPTION: lookup}
    if not is_speculative(model):
        return SpecModel(model, None, SpecConfig(method="cllm", num_heads=window or DEFAULT_WINDOW, options=options))
    if model.spec.method != "cllm":
        raise ValueError(f"a {model.spec.method} checkpoint is no CLLM; give a plain base or a CLLM")
    spec = SpecConfig(method="cllm", num_heads=window or model.spec.num_heads,
                      options={**model.spec.options, **options})
    return SpecModel(model.base, None, spec)


@torch.no_grad()
def jacobi_speed(model: nn.Module, tokenizer, prompts: Sequence[str], window: Optional[int],
                 max_new_tokens: int, lookup: Optional[int] = 0) -> dict:
    """Greedy Jacobi decoding through the engine loop, as the bench runs it: tokens per step (1.0 = AR).

    ``model``: a plain causal LM (decoded with ``window``-token windows) or a
    CLLM ``SpecModel`` (its own window unless ``window`` is given).
    """
    from fastchat.utils import get_context_length

    from fastchat_spec.bench.run import run_engine
    from fastchat_spec.generate.loop import loops_of

    spec = as_cllm(model, window, lookup)
    base = spec.base
    was_training = base.training
    base.eval()
    cut = get_context_length(base.config) - max_new_tokens - 1  # FastChat's cut of long prompts, as the bench
    runs = []
    try:
        for prompt in prompts:
            ids = tokenizer(prompt).input_ids[-cut:]
            runs.append(run_engine(spec, ids, max_new_tokens, 0.0, tokenizer.eos_token_id))
    finally:
        for loop in loops_of(spec):  # its thread would hold the model for a minute: end it now
            loop.stop()
        base.train(was_training)
    steps = sum(r.steps - 1 for r in runs)  # the prefill is not a Jacobi step
    tokens = sum(r.tokens - 1 for r in runs)
    return {"tokens_per_step": round(tokens / max(steps, 1), 3),
            "median_tau": round(statistics.median([r.tau for r in runs]), 3) if runs else None,
            "steps": steps, "tokens": tokens, "prompts": len(runs), "window": spec.spec.num_heads,
            "lookup_tokens": lookup}


def evaluate(model, tokenizer, heldout, prompts, window: int, batch_size: int, jacobi_tokens: int, what: str) -> dict:
    """The held-out loss (``heldout`` dataset or None) and Jacobi speed on ``prompts``, printed as ``what``."""
    out = {}
    if heldout is not None:
        out["heldout"] = heldout_loss(model, heldout, tokenizer.pad_token_id, batch_size)
    if prompts:
        out["jacobi"] = jacobi_speed(model, tokenizer, prompts, window, jacobi_tokens)
    if out:
        print(f"{what}: {json.dumps(out)}", flush=True)
    return out


# ---------------------------------------------------------------- one checkpoint, as FastChat loads it


def load_for_eval(path: str, device: str, dtype: torch.dtype):
    """(model, tokenizer) through FastChat's ``load_model``: our CLLM adapter for a CLLM, a plain LM otherwise."""
    import fastchat_spec
    from fastchat.model.model_adapter import load_model

    fastchat_spec.register()
    model, tokenizer = load_model(path, device=device, dtype=dtype)
    return model, tokenizer


def perplexity_of(model, tokenizer, conversations: Sequence[dict], max_len: int = 1024,
                  batch_size: int = 8) -> dict:
    """``heldout_loss`` of the causal LM under ``model`` (a SpecModel's base) on FastChat conversations."""
    from fastchat_spec.spec_model import is_speculative
    from fastchat_spec.train.dataset import supervised_dataset

    base = model.base if is_speculative(model) else model
    if tokenizer.pad_token is None:  # FastChat's preprocess pads; the trainers pad with unk too (trainer.load_base)
        tokenizer.pad_token = tokenizer.unk_token
    dataset = supervised_dataset(tokenizer, list(conversations), max_len)
    return heldout_loss(base, dataset, tokenizer.pad_token_id, batch_size)


def measure(path: str, heldout: Sequence[dict], domains: Sequence[str], num_prompts: int, max_new_tokens: int,
            window: Optional[int], device: str, dtype: torch.dtype, ppl_conversations: Optional[int] = None,
            max_len: int = 1024, lookup: Optional[int] = 0) -> dict:
    """Tokens per step on the held-out prompts of every domain, and held-out perplexity, of one checkpoint."""
    import time

    from fastchat_spec.conversation import conversation_template

    started = time.perf_counter()
    model, tokenizer = load_for_eval(path, device, dtype)
    template = conversation_template(path)
    out = {"model": path, "served_as": getattr(getattr(model, "spec", None), "method", "plain")}
    for domain in domains:
        prompts = heldout_prompts(heldout, template, num_prompts, domain)
        out[domain] = jacobi_speed(model, tokenizer, prompts, window, max_new_tokens, lookup)
    out["heldout"] = perplexity_of(model, tokenizer, list(heldout)[:ppl_conversations], max_len)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def main(argv: Optional[List[str]] = None) -> dict:
    from fastchat_spec.train.cllm_data import DTYPES, device_and_dtype
    from fastchat_spec.train.data import read_fastchat_json
    from fastchat_spec.train.domain import DOMAINS

    parser = argparse.ArgumentParser(
        prog="python -m fastchat_spec.train.cllm_eval",
        description="Greedy Jacobi tokens per step (through the serving engine, as the bench) on held-out "
                    "prompts of each domain, and held-out perplexity, of a CLLM or a plain base.")
    parser.add_argument("--model-path", required=True, help="a CLLM checkpoint or a plain base (Hugging Face folder)")
    parser.add_argument("--data_path", required=True,
                        help="held-out FastChat JSON, e.g. heldout.json from `python -m fastchat_spec.train.data`")
    parser.add_argument("--domains", default="all", help="comma list of: " + ", ".join(DOMAINS))
    parser.add_argument("--num-prompts", type=int, default=32, help="held-out prompts per domain (default 32)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens decoded per prompt (default 128)")
    parser.add_argument("--window", type=int, default=None,
                        help="Jacobi window n; default: the checkpoint's n_token_seq_length, else 16")
    parser.add_argument("--lookup-tokens", type=int, default=0,
                        help="length of the branch of guesses copied from the context beside the window (default 0: "
                             "the Jacobi window alone, what consistency training changes; -1: as served, the "
                             "window's guesses)")
    parser.add_argument("--ppl-conversations", type=int, default=None,
                        help="held-out conversations for the perplexity (default all)")
    parser.add_argument("--max-len", type=int, default=1024,
                        help="tokens per held-out conversation for the perplexity (default 1024)")
    parser.add_argument("--device", default=None, help="cuda or cpu; default cuda when available")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="default bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--out", default=None, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    domains = [d for d in args.domains.split(",") if d]
    if not domains or any(d not in DOMAINS for d in domains):
        parser.error(f"--domains {args.domains!r}: use a comma list of {', '.join(DOMAINS)}")
    device, dtype = device_and_dtype(args.device, args.dtype)
    result = measure(args.model_path, read_fastchat_json(args.data_path), domains, args.num_prompts,
                     args.max_new_tokens, args.window, device, dtype, args.ppl_conversations, args.max_len,
                     None if args.lookup_tokens < 0 else args.lookup_tokens)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
