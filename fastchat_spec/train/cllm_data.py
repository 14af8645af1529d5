"""Collect Jacobi trajectories from a base model: the training data of a CLLM.

References: Kou et al. 2024, "CLLMs: Consistency Large Language Models"
(arXiv 2403.00835), Sec. 3.2 and Algorithm 1 (trajectory collection), and the
record layout of its reference repository (hao-ai-lab/Consistency_LLM,
``data/generate_trajectory.py``), whose field names we keep so that its users
recognise them.

For every conversation, the prompt is the first user turn in the model's
FastChat template. The answer is decoded n tokens at a time. Each window starts
from n tokens drawn at random from the prompt (as CLLM initialises windows) and
is updated by Jacobi iteration, all n positions at once, greedily, until it
stops changing. The fixed point equals greedy autoregressive decoding, so the
windows, concatenated, are the base model's greedy answer. Every intermediate
window is a point of the trajectory that consistency training maps to the
fixed point. Decoding stops after an end-of-sequence token or
``--max_new_seq_len`` tokens. ``--domain code|math`` keeps only the
conversations of one domain (``domain.py``).

Output: a JSON list with one record per window (per n-token block of an answer):

    {
      "data_id": "<conversation id>",
      "jacobian_itr_id": 3,               # index of this window in the answer
      "prompt_ids_len": 57,               # tokens of the templated prompt alone
      "prompt_ids": [...],                # the context: prompt + the earlier windows' fixed points
      "answer_trajectory_ids": [[...], ...],  # Jacobi states, first = random start, last = fixed point
      "teacher_output_ids": [...],        # prompt_ids + the fixed point
      "labels_ids": [...]                 # only with --use_labels: the templated prompt + dataset answer
    }

All states of a window have the same length: n, or less when the fixed point
holds the end-of-sequence token (the window is cut just after it).

Differences from the reference collector: ids are flat lists (no batch axis);
``data_id`` is the conversation's own id and ``jacobian_itr_id`` an integer;
several prompts are decoded as one batch over a preallocated KV cache, with
only the window run through the model at each iteration; iteration is greedy
(the reference samples among the top 2); no augmented states and no
post-filtering are added.

Usage: ``python -m fastchat_spec.train.cllm_data --help``.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import torch

from fastchat_spec.train.domain import DOMAINS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_and_dtype(device: str | None, dtype: str | None) -> tuple[str, torch.dtype]:
    """The CLLM tools' defaults: cuda when there is one, bfloat16 there and float32 on the CPU."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, DTYPES[dtype] if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)


@dataclass
class Prompt:
    data_id: str
    ids: List[int]
    labels: Optional[List[int]] = None


@dataclass
class Window:
    """One converged n-token block of one answer, with its Jacobi states."""

    states: List[List[int]]  # first: the random start; last: the fixed point
    done: bool  # the fixed point ends the answer (end-of-sequence token)


# ---------------------------------------------------------------- prompts


def build_prompts(convs: Sequence[dict], tokenizer, template, max_prompt_len: int, use_labels: bool) -> List[Prompt]:
    """First user turn of each conversation in the template; with labels, also its first answer."""
    prompts = []
    for conv in convs:
        turns = conv.get("conversations") or []
        if len(turns) < 1 or turns[0].get("from") != "human":
            continue
        chat = template.copy()
        chat.append_message(chat.roles[0], turns[0]["value"])
        chat.append_message(chat.roles[1], None)
        ids = tokenizer(chat.get_prompt()).input_ids
        if not ids or len(ids) > max_prompt_len:
            continue
        labels = None
        if use_labels:
            if len(turns) < 2 or turns[1].get("from") != "gpt":
                continue
            chat.update_last_message(turns[1]["value"])
            labels = tokenizer(chat.get_prompt()).input_ids
            if labels[-1] != tokenizer.eos_token_id:
                labels.append(tokenizer.eos_token_id)
        prompts.append(Prompt(str(conv.get("id", len(prompts))), ids, labels))
    return prompts


# ---------------------------------------------------------------- batched Jacobi decoding


def window_mask(pad: torch.Tensor, start: int, length: int, capacity: int, dtype) -> torch.Tensor:
    """Additive mask (B, 1, length, capacity) for a block written at slots start..start+length.

    Row i of sequence b sees its own committed slots (from its left padding
    ``pad[b]`` on) and the block up to itself. A padding query sees itself only,
    so that no row is fully masked (which would put NaNs into the cache).
    """
    slots = torch.arange(capacity, device=pad.device)
    query = start + torch.arange(length, device=pad.device)
    causal = slots.view(1, 1, -1) <= query.view(1, -1, 1)
    real = slots.view(1, 1, -1) >= pad.view(-1, 1, 1)
    itself = slots.view(1, 1, -1) == query.view(1, -1, 1)
    allowed = causal & (real | itself)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=pad.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def forward_block(model, cache, tokens: torch.Tensor, pad: torch.Tensor, start: int) -> torch.Tensor:
    """Logits (B, T, V) of ``tokens`` (B, T) written at slots start..start+T of a left-padded batch."""
    b, t = tokens.shape
    capacity = cache.layers[0].max_cache_len
    dtype = model.get_input_embeddings().weight.dtype
    slots = start + torch.arange(t, device=tokens.device)
    positions = (slots.view(1, -1) - pad.view(-1, 1)).clamp_min(0)
    out = model.get_decoder()(
        input_ids=tokens,
        position_ids=positions,
        attention_mask=window_mask(pad, start, t, capacity, dtype),
        past_key_values=cache,
        cache_position=slots,
        use_cache=True,
    )
    return model.get_output_embeddings()(out.last_hidden_state)


def random_prompt_tokens(prompts: Sequence[List[int]], width: int, generator: torch.Generator) -> torch.Tensor:
    """(B, width) tokens drawn uniformly from each row's own prompt (CLLM's window start)."""
    rows = []
    for ids in prompts:
        picks = torch.randint(len(ids), (width,), generator=generator)
        rows.append(torch.tensor(ids)[picks])
    return torch.stack(rows)


@torch.inference_mode()
def jacobi_batch(model, prompts: Sequence[List[int]], window: int, max_new_tokens: int, eos_token_id: int,
                 generator: torch.Generator) -> List[List[Window]]:
    """Greedy Jacobi decoding of several prompts at once; the windows of each answer in order.

    Prompts are left-padded to a common length P. The prompt minus its last
    token is prefilled; then each window feeds its root (the last token so far)
    and its first n-1 guesses at slots s..s+n-1, and row k of the output
    predicts guess k. Greedy Jacobi converges within n updates, so at most
    n + 1 forwards confirm the fixed point; the last forward's KV entries are
    those of the fixed point and stay in the cache.
    """
    from transformers.cache_utils import StaticCache

    device = model.device
    batch = len(prompts)
    longest = max(len(p) for p in prompts)
    num_windows = -(-max_new_tokens // window)
    capacity = longest + num_windows * window
    cache = StaticCache(config=model.config, max_cache_len=capacity)
    pad = torch.tensor([longest - len(p) for p in prompts], device=device)
    padded = torch.tensor([[p[0]] * (longest - len(p)) + list(p) for p in prompts], device=device)
    if longest > 1:
        forward_block(model, cache, padded[:, :-1], pad, 0)
    root = padded[:, -1:]
    start = longest - 1
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    answers: List[List[Window]] = [[] for _ in prompts]
    for _ in range(num_windows):
        state = random_prompt_tokens(prompts, window, generator).to(device)
        states = [state]
        converged = torch.zeros(batch, dtype=torch.bool, device=device)
        for _ in range(window + 1):
            logits = forward_block(model, cache, torch.cat([root, state[:, :-1]], dim=1), pad, start)
            update = torch.where(converged.view(-1, 1), state, logits.argmax(dim=-1))
            converged = converged | (update == state).all(dim=1)
            if bool(converged.all()):
                break
            state = update
            states.append(state)
        else:  # rounding kept a row moving: keep its last state, with matching KV entries
            forward_block(model, cache, torch.cat([root, state[:, :-1]], dim=1), pad, start)
        stacked = torch.stack(states, dim=1).cpu()  # (B, steps, n)
        for row in range(batch):
            if not bool(finished[row]):
                answers[row].append(_window_of(stacked[row], eos_token_id))
        finished |= (state == eos_token_id).any(dim=1)
        if bool(finished.all()):
            break
        root = state[:, -1:]
        start += window
    return answers


def _window_of(states: torch.Tensor, eos_token_id: int) -> Window:
    """The distinct states of one row (it may have converged before the batch did), cut after EOS."""
    kept = [states[0]]
    for s in states[1:]:
        if not torch.equal(s, kept[-1]):
            kept.append(s)
    fixed = kept[-1]
    eos = (fixed == eos_token_id).nonzero()
    length = int(eos[0]) + 1 if len(eos) else fixed.numel()
    return Window(states=[s[:length].tolist() for s in kept], done=bool(len(eos)))


def records_for(prompt: Prompt, windows: List[Window]) -> Iterator[dict]:
    context = list(prompt.ids)
    for index, window in enumerate(windows):
        fixed = window.states[-1]
        record = {
            "data_id": prompt.data_id,
            "jacobian_itr_id": index,
            "prompt_ids_len": len(prompt.ids),
            "prompt_ids": list(context),
            "answer_trajectory_ids": window.states,
            "teacher_output_ids": context + fixed,
        }
        if prompt.labels is not None:
            record["labels_ids"] = prompt.labels
        yield record
        context += fixed


def collect(model, tokenizer, prompts: Sequence[Prompt], window: int, max_new_seq_len: int, batch_size: int,
            seed: int = 0, progress: bool = True) -> List[dict]:
    """Trajectory records for ``prompts``, decoded ``batch_size`` at a time (similar lengths together)."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
    by_prompt: dict = {}
    bar = tqdm(total=len(prompts), desc="Jacobi trajectories", unit="prompt", disable=not progress)
    for i in range(0, len(order), batch_size):
        chunk = [prompts[j] for j in order[i : i + batch_size]]
        answers = jacobi_batch(model, [p.ids for p in chunk], window, max_new_seq_len, tokenizer.eos_token_id,
                               generator)
        for j, windows in zip(order[i : i + batch_size], answers):
            by_prompt[j] = list(records_for(prompts[j], windows))
        bar.update(len(chunk))
    bar.close()
    return [record for j in range(len(prompts)) for record in by_prompt[j]]


# ---------------------------------------------------------------- command line


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastchat_spec.train.cllm_data",
        description="Collect greedy Jacobi trajectories of a base model on FastChat JSON conversations: "
        "the training data of `python -m fastchat_spec.train.cllm`. One JSON record per n-token window "
        "(the record format is in this module's docstring).",
    )
    parser.add_argument("--model", required=True, help="base model folder (Hugging Face layout), e.g. runs/vicuna-small")
    parser.add_argument("--data_path", required=True,
                        help="FastChat JSON conversations, e.g. from `python -m fastchat_spec.train.data`")
    parser.add_argument("--output", required=True, help="JSON file to write the trajectories to")
    parser.add_argument("--max_new_tokens", type=int, default=16,
                        help="n, the Jacobi window length (the CLLM's n_token_seq_length); default 16")
    parser.add_argument("--max_new_seq_len", type=int, default=512,
                        help="answer tokens decoded per prompt at most; default 512")
    parser.add_argument("--use_labels", action="store_true",
                        help="also store the dataset's first answer (labels_ids) for the AR loss")
    parser.add_argument("--domain", choices=list(DOMAINS), default="all",
                        help="only conversations of this domain (rules: fastchat_spec/train/domain.py); default all")
    parser.add_argument("--skip_prompts", type=int, default=0,
                        help="leave out the first N conversations (of the domain): later rounds take fresh ones")
    parser.add_argument("--max_prompts", type=int, default=None, help="use only the first N conversations")
    parser.add_argument("--max_prompt_len", type=int, default=512,
                        help="skip prompts longer than this many tokens; default 512")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="prompts decoded together; default 64 on a GPU, 4 on the CPU")
    parser.add_argument("--device", default=None, help="cuda or cpu; default cuda when available")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="weights' dtype; default bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random window starts")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if args.max_new_seq_len < args.max_new_tokens:
        parser.error(f"--max_new_seq_len {args.max_new_seq_len} is shorter than one window "
                     f"(--max_new_tokens {args.max_new_tokens})")
    if not os.path.isdir(args.model):
        parser.error(f"--model {args.model} is not a folder; train one with `python -m fastchat_spec.train.base`")
    if not os.path.isfile(args.data_path):
        parser.error(f"--data_path {args.data_path} does not exist; write it with `python -m fastchat_spec.train.data`")
    return args


def load_base(path: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, tokenizer


def main(argv: Optional[List[str]] = None) -> dict:
    """Command line entry point; returns counts (prompts, records, tokens, seconds)."""
    import time

    from fastchat_spec.conversation import conversation_template
    from fastchat_spec.train.data import read_fastchat_json
    from fastchat_spec.train.domain import select

    args = _parse_args(argv)
    device, dtype = device_and_dtype(args.device, args.dtype)
    batch_size = args.batch_size or (64 if device.startswith("cuda") else 4)
    model, tokenizer = load_base(args.model, device, dtype)
    convs = select(read_fastchat_json(args.data_path), args.domain)
    stop = None if args.max_prompts is None else args.skip_prompts + args.max_prompts
    convs = convs[args.skip_prompts : stop]
    prompts = build_prompts(convs, tokenizer, conversation_template(args.model), args.max_prompt_len, args.use_labels)
    if not prompts:
        raise ValueError(f"{args.data_path}: no conversation{'' if args.domain == 'all' else ' of ' + args.domain} "
                         f"(after --skip_prompts {args.skip_prompts}) starts with a user turn of at most "
                         f"{args.max_prompt_len} tokens{' followed by an answer' if args.use_labels else ''}; "
                         "check the file, --domain, or raise --max_prompt_len")
    started = time.perf_counter()
    records = collect(model, tokenizer, prompts, args.max_new_tokens, args.max_new_seq_len, batch_size, args.seed)
    seconds = time.perf_counter() - started
    parent = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(parent, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(records, f)
    tokens = sum(len(r["answer_trajectory_ids"][-1]) for r in records)
    states = sum(len(r["answer_trajectory_ids"]) for r in records)
    summary = {"prompts": len(prompts), "records": len(records), "answer_tokens": tokens,
               "mean_states_per_window": states / max(len(records), 1), "seconds": seconds}
    print(f"{len(prompts)} prompts -> {len(records)} windows, {tokens} answer tokens in {seconds:.1f} s "
          f"({tokens / max(seconds, 1e-9):.0f} tokens/s); {summary['mean_states_per_window']:.1f} Jacobi states "
          f"per window; wrote {args.output}")
    return summary


if __name__ == "__main__":
    main()
