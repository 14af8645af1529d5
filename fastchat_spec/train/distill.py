"""Self-distillation data: the base model answers the user turns of a FastChat JSON file.

Medusa-2 (Cai et al. 2024, section 3.2.2) trains on the base model's own
answers so that joint training does not drift from the base's distribution.
This keeps every conversation's user turns and regenerates each assistant turn,
turn by turn, with the model's FastChat conversation template:

* locally: batched Hugging Face ``generate`` with left padding (GPU or CPU);
* through a running FastChat model worker (``--worker-address``, /worker_generate);
* through an OpenAI-compatible server (``--openai-api-base``, e.g. FastChat's).

    python -m fastchat_spec.train.distill --model-path BASE --data_path train.json --output distilled.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm import tqdm

from fastchat_spec.train.data import read_fastchat_json, write_fastchat_json

Generate = Callable[[list], list]  # [Conversation with the last assistant turn open] -> [answer text]


# --------------------------------------------------------------------------- turns
def human_turns(conv: dict) -> list[str]:
    """The user turns, in order (assistant turns are regenerated, so they are dropped)."""
    return [t["value"] for t in conv["conversations"] if t["from"] in ("human", "user")]


def distill(convs: list, generate: Generate, make_conv: Callable, batch_size: int,
            max_turns: int | None = None, prompt_fits: Callable[[str], bool] = lambda p: True) -> tuple:
    """(new conversations, number of turns skipped for length). Round r answers the r-th user turn of all."""
    prompts = [human_turns(c)[:max_turns] for c in convs]
    answers: list[list[str]] = [[] for _ in convs]
    alive = [bool(p) for p in prompts]
    skipped = 0
    total = sum(len(p) for p in prompts)
    with tqdm(total=total, desc="distilling", unit="turn") as bar:
        for r in range(max((len(p) for p in prompts), default=0)):
            todo = [i for i, p in enumerate(prompts) if alive[i] and len(p) > r]
            texts = {i: _prompt(make_conv(), prompts[i][: r + 1], answers[i]) for i in todo}
            fits = [i for i in todo if prompt_fits(texts[i].get_prompt())]
            for i in set(todo) - set(fits):  # the conversation ends before this turn
                alive[i] = False
                skipped += len(prompts[i]) - r
                bar.update(len(prompts[i]) - r)
            fits.sort(key=lambda i: len(texts[i].get_prompt()))  # similar lengths batch with less padding
            for start in range(0, len(fits), batch_size):
                chunk = fits[start:start + batch_size]
                for i, text in zip(chunk, generate([texts[i] for i in chunk])):
                    answers[i].append(text)
                bar.update(len(chunk))
    out = []
    for conv, asked, said in zip(convs, prompts, answers):
        turns = []
        for q, a in zip(asked, said):
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        if turns:
            out.append({"id": conv.get("id", str(len(out))), "conversations": turns})
    return out, skipped


def _prompt(conv, questions: list[str], answers: list[str]):
    for q, a in zip(questions, answers + [None]):
        conv.append_message(conv.roles[0], q)
        conv.append_message(conv.roles[1], a)
    return conv


def cut_at_stop(text: str, stop) -> str:
    for s in [stop] if isinstance(stop, str) else (stop or []):
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


# --------------------------------------------------------------------------- back ends
def halving_on_oom(generate: Generate, free_memory: Callable[[], None], prompt_tokens: Callable[[object], int],
                   max_new_tokens: int) -> Generate:
    """generate, but a batch that runs out of GPU memory is halved (again if need be); answers keep their order.

    Once a size has failed, later batches start at the size that last fitted instead of failing again."""
    limit: int | None = None  # the batch size that last fitted after a failure

    def one(convs: list) -> list:
        nonlocal limit
        try:
            return generate(convs)
        except torch.OutOfMemoryError:
            pass  # leave the handler first: its traceback holds the failed batch's tensors
        free_memory()
        if len(convs) == 1:
            raise RuntimeError(f"distill: one prompt of {prompt_tokens(convs[0])} tokens does not fit even alone in "
                               f"GPU memory with --max-new-tokens {max_new_tokens}; lower --max-new-tokens or run "
                               "fewer processes on this GPU")
        if limit is None:
            print(f"distill: batch of {len(convs)} did not fit in GPU memory; halving", file=sys.stderr)
        limit = min(limit or len(convs), (len(convs) + 1) // 2)
        return safe(convs)

    def safe(convs: list) -> list:
        answers: list = []
        while len(answers) < len(convs):  # the limit can fall while the batch is under way
            answers += one(convs[len(answers):len(answers) + (limit or len(convs))])
        return answers

    return safe


def _free_cuda_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def local_generator(model_path: str, device: str, max_new_tokens: int, temperature: float, top_p: float,
                    conv_template: str | None):
    """(generate, make_conv, prompt_fits) for batched HF generate with left padding."""
    from fastchat.conversation import get_conv_template
    from fastchat.model.model_adapter import load_model
    from fastchat.utils import get_context_length

    from fastchat_spec.conversation import conversation_template

    model, tokenizer = load_model(model_path, device=device, num_gpus=1)
    model = getattr(model, "base", model)  # a speculative checkpoint: its base model answers
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    template = conv_template or conversation_template(model_path).name
    context = get_context_length(model.config)
    proto = get_conv_template(template)
    eos = [tokenizer.eos_token_id] + list(proto.stop_token_ids or [])

    @torch.no_grad()
    def generate(convs: list) -> list:
        batch = tokenizer([c.get_prompt() for c in convs], return_tensors="pt", padding=True).to(device)
        sample = temperature > 1e-5
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sample,
                             temperature=temperature if sample else None, top_p=top_p if sample else None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        texts = tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
        return [cut_at_stop(t, proto.stop_str) for t in texts]

    def tokens(prompt: str) -> int:
        return len(tokenizer(prompt).input_ids)

    def fits(prompt: str) -> bool:
        return tokens(prompt) + max_new_tokens <= context

    safe = halving_on_oom(generate, _free_cuda_memory, lambda c: tokens(c.get_prompt()), max_new_tokens)
    return safe, lambda: get_conv_template(template), fits


def worker_generator(address: str, model_name: str, max_new_tokens: int, temperature: float, top_p: float,
                     concurrency: int, conv_template: str | None):
    """(generate, make_conv) through a FastChat model worker's /worker_generate."""
    import requests
    from fastchat.conversation import get_conv_template

    address = address.rstrip("/")
    if conv_template is None:
        reply = requests.post(address + "/worker_get_conv_template", timeout=60)
        reply.raise_for_status()
        conv_template = reply.json()["conv"]["name"]
    proto = get_conv_template(conv_template)

    def one(conv) -> str:
        params = {"model": model_name, "prompt": conv.get_prompt(), "temperature": temperature, "top_p": top_p,
                  "max_new_tokens": max_new_tokens, "stop": proto.stop_str, "stop_token_ids": proto.stop_token_ids,
                  "echo": False}
        reply = requests.post(address + "/worker_generate", json=params, timeout=600)
        reply.raise_for_status()
        out = reply.json()
        if out.get("error_code", 0):
            raise RuntimeError(f"worker {address} answered error {out['error_code']}: {out.get('text')}")
        return cut_at_stop(out["text"], proto.stop_str)

    pool = ThreadPoolExecutor(concurrency)
    return (lambda convs: list(pool.map(one, convs))), (lambda: get_conv_template(conv_template))


def openai_generator(api_base: str, model_name: str, max_new_tokens: int, temperature: float, top_p: float,
                     concurrency: int):
    """(generate, make_conv) through an OpenAI-compatible /chat/completions (it applies the template)."""
    import requests
    from fastchat.conversation import get_conv_template

    url = api_base.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'EMPTY')}"}

    def one(conv) -> str:
        messages = [{"role": "user" if role == conv.roles[0] else "assistant", "content": text}
                    for role, text in conv.messages if text is not None]
        body = {"model": model_name, "messages": messages, "max_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p}
        reply = requests.post(url, json=body, headers=headers, timeout=600)
        reply.raise_for_status()
        return reply.json()["choices"][0]["message"]["content"].strip()

    pool = ThreadPoolExecutor(concurrency)
    # Any template records the turns; the server formats them for its model.
    return (lambda convs: list(pool.map(one, convs))), (lambda: get_conv_template("vicuna_v1.1"))


# --------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", "--model_path", help="Base model folder (local generation), or the model "
                   "name to ask a worker / API for (default there: --model-name).")
    p.add_argument("--data_path", "--data-path", required=True, help="FastChat JSON whose user turns are kept.")
    p.add_argument("--output", required=True, help="Where to write the distilled FastChat JSON.")
    p.add_argument("--max-new-tokens", type=int, default=512, help="Longest answer per turn.")
    p.add_argument("--batch-size", type=int, default=16,
                   help="Prompts per generate call (local), or requests in flight (worker / API).")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default); > 0: sampling.")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-turns", type=int, default=None, help="Answer at most this many user turns per conversation.")
    p.add_argument("--max-conversations", type=int, default=None, help="Use only the first N conversations.")
    p.add_argument("--conv-template", default=None, help="FastChat template name (default: the model's own).")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available).")
    p.add_argument("--worker-address", default=None, help="Use a running FastChat model worker, e.g. "
                   "http://localhost:21002, instead of loading the model here.")
    p.add_argument("--openai-api-base", default=None, help="Use an OpenAI-compatible server, e.g. "
                   "http://localhost:8000/v1 (FastChat's openai_api_server).")
    p.add_argument("--model-name", default=None, help="Model name for the worker / API (default: the basename of "
                   "--model-path).")
    args = p.parse_args(argv)
    if args.worker_address and args.openai_api_base:
        p.error("pass only one of --worker-address and --openai-api-base")
    if not (args.worker_address or args.openai_api_base) and not args.model_path:
        p.error("--model-path is required to generate locally (or pass --worker-address / --openai-api-base)")
    if (args.worker_address or args.openai_api_base) and not (args.model_name or args.model_path):
        p.error("the worker / API needs a model name: pass --model-name")
    return args


def _always_fits(prompt: str) -> bool:
    return True


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    convs = read_fastchat_json(args.data_path)[: args.max_conversations]
    name = args.model_name or os.path.basename(os.path.normpath(args.model_path or ""))
    fits = _always_fits  # remote servers check lengths themselves
    if args.worker_address:
        generate, make_conv = worker_generator(args.worker_address, name, args.max_new_tokens, args.temperature,
                                               args.top_p, args.batch_size, args.conv_template)
    elif args.openai_api_base:
        generate, make_conv = openai_generator(args.openai_api_base, name, args.max_new_tokens, args.temperature,
                                               args.top_p, args.batch_size)
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        generate, make_conv, fits = local_generator(args.model_path, device, args.max_new_tokens, args.temperature,
                                                    args.top_p, args.conv_template)
    out, skipped = distill(convs, generate, make_conv, args.batch_size, args.max_turns, fits)
    write_fastchat_json(out, args.output)
    summary = {"conversations": len(out), "turns": sum(len(c["conversations"]) // 2 for c in out),
               "skipped_turns_too_long": skipped, "output": args.output}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
