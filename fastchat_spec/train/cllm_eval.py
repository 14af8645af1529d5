"""What CLLM training reports before and after: held-out loss and perplexity, and Jacobi tokens per step.

The held-out loss is the base's cross-entropy on the assistant turns of
held-out FastChat conversations (did consistency training keep its answers?);
the speed is greedy Jacobi decoding with the serving engine on held-out
prompts, in tokens per base forward (1.0 = autoregressive).
"""
from __future__ import annotations

import json
import math
from contextlib import nullcontext
from typing import List, Sequence

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


def heldout_prompts(conversations: Sequence[dict], template, limit: int) -> List[str]:
    prompts = []
    for conv in conversations:
        turns = conv.get("conversations") or []
        if turns and turns[0].get("from") == "human":
            chat = template.copy()
            chat.append_message(chat.roles[0], turns[0]["value"])
            chat.append_message(chat.roles[1], None)
            prompts.append(chat.get_prompt())
        if len(prompts) >= limit:
            break
    return prompts


@torch.no_grad()
def jacobi_speed(model: nn.Module, tokenizer, prompts: Sequence[str], window: int, max_new_tokens: int) -> dict:
    """Greedy Jacobi decoding with the serving engine: tokens per base forward (1.0 = autoregressive)."""
    from fastchat_spec.generate.engine import Generation
    from fastchat_spec.generate.sampling import SamplingParams
    from fastchat_spec.spec_model import SpecConfig, SpecModel

    was_training = model.training
    model.eval()
    spec_model = SpecModel(model, None, SpecConfig(method="cllm", num_heads=window))
    greedy = SamplingParams(temperature=0.0, top_p=1.0, top_k=-1, repetition_penalty=1.0)
    steps = tokens = 0
    for prompt in prompts:
        generation = Generation(spec_model, tokenizer(prompt).input_ids, max_new_tokens, greedy)
        try:
            generation.prefill()
            while generation.stats.tokens < max_new_tokens:
                new = generation.step()
                if tokenizer.eos_token_id in new:
                    break
        finally:
            if hasattr(generation, "close"):
                generation.close()
        steps += generation.stats.steps - 1  # the prefill is not a Jacobi step
        tokens += generation.stats.tokens - 1
    model.train(was_training)
    return {"tokens_per_step": round(tokens / max(steps, 1), 3), "steps": steps, "tokens": tokens,
            "prompts": len(prompts), "window": window}


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
