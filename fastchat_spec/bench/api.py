"""Decoding speed as an OpenAI-API user sees it, through FastChat's own servers.

Example (``scripts/worker_bench.sh`` starts the servers and runs this):
  python -m fastchat_spec.bench.api --api-base http://127.0.0.1:8000/v1 \\
      --models spec,stock --num-prompts 10 --max-new-tokens 256 --out api.json

Every prompt's first turn goes to ``/v1/chat/completions`` as one user message at
temperature 0, for each model in turn, never two requests at once (the models
may share one device). Per prompt and model there are two requests:

- non-streamed: tok/s = completion tokens / wall seconds of the request;
- streamed: time to the first chunk with text (TTFT) and wall seconds to [DONE].

The summary quotes per-model medians, the median per-prompt tok/s ratio of the
first model over each other one, and how often their greedy texts are identical
(expected for a speculative checkpoint and its own base; reported, not checked).
One warm-up request per model runs first and is not timed.

With --concurrency 1,4,16,32 the same prompts then go out from that many
concurrent clients per level, model after model, through the load tool's client
(``fastchat_spec.bench.load``): aggregate completion tok/s and latency per level
and model side by side, every answer checked against the model's one-at-a-time
answer (failed, empty, garbled, mismatched counts).
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys

from fastchat_spec.bench.client import Reply, generated_tokens, send_chat, session_for
from fastchat_spec.bench.checks import CONTEXT_OVERFLOW, Reference
from fastchat_spec.bench.load import api_parser, build_plan, parse_int_list, run_level


class APIError(RuntimeError):
    def __init__(self, model: str, code, message: str):
        super().__init__(f"model {model!r}: {message}")
        self.code = code


def parse_args(argv=None):
    p = api_parser("fastchat_spec.bench.api", __doc__)
    p.add_argument("--models", required=True,
                   help="comma list of model names as /v1/models lists them; the first is compared with each "
                        "other one (e.g. spec,stock)")
    p.add_argument("--prompts", help="JSONL with 'turns' (list of str) and optional 'category'; "
                                     "default: held-out ShareGPT first turns")
    p.add_argument("--num-prompts", type=int, default=10, help="how many prompts (default 10)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="max_tokens per request (default 256)")
    p.add_argument("--concurrency", type=lambda s: parse_int_list(s, "--concurrency"), default=[],
                   help="then, per level of this comma list (e.g. 1,4,16,32), the same prompts from that many "
                        "concurrent clients, model after model (fastchat_spec.bench.load): aggregate tok/s and "
                        "latency side by side; every answer is checked against its one-at-a-time answer. The "
                        "workers need --limit-worker-concurrency at least the largest level")
    p.add_argument("--requests-per-level", type=int, default=0,
                   help="requests per model and concurrency level (default: 4 x the level, at least the number "
                        "of prompts)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take (default 600)")
    p.add_argument("--out", required=True, help="results JSON")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models:
        p.error("--models: give at least one model name")
    if len(set(args.models)) != len(args.models):
        p.error(f"--models: a name appears twice in {args.models}")
    if args.num_prompts < 1 or args.max_new_tokens < 1:
        p.error("--num-prompts and --max-new-tokens must be at least 1")
    if args.requests_per_level < 0:
        p.error("--requests-per-level must be at least 1 (or 0 for the default)")
    return args


def load_questions(prompts_file: str | None, limit: int) -> list[tuple[str, str]]:
    """(first turn, category) pairs: raw user text, the server applies the model's template."""
    from fastchat_spec.bench.prompts import load_turns

    return [(turns[0], category) for turns, category in load_turns(prompts_file, limit)]


def check_models(session, api_base: str, models: list[str]) -> None:
    r = session.get(api_base + "/models", timeout=30)
    r.raise_for_status()
    listed = [m["id"] for m in r.json()["data"]]
    missing = [m for m in models if m not in listed]
    if missing:
        sys.exit(f"--models: {missing} not served at {api_base}/models (it lists {listed}); "
                 "check the workers' --model-names")


def _answered(model: str, reply: Reply) -> Reply:
    if not reply.ok:
        raise APIError(model, reply.error_code, reply.error)
    return reply


def timed_request(session, api_base, model, question, max_tokens, timeout) -> dict:
    """The non-streamed request: text, tokens and tok/s."""
    reply = _answered(model, send_chat(session, api_base, model, question, max_tokens, False, timeout))
    tokens = generated_tokens(reply.usage_tokens, reply.finish_reason, max_tokens)
    return {"text": reply.text, "finish_reason": reply.finish_reason, "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.usage_tokens, "tokens": tokens, "seconds": reply.seconds,
            "tok_s": tokens / reply.seconds if reply.seconds > 0 else 0.0}


def streamed_request(session, api_base, model, question, max_tokens, timeout) -> dict:
    """The streamed request: seconds to the first chunk with text, and to [DONE]."""
    reply = _answered(model, send_chat(session, api_base, model, question, max_tokens, True, timeout))
    return {"ttft_s": reply.ttft_s if reply.ttft_s is not None else reply.seconds, "seconds": reply.seconds,
            "chunks": reply.chunks, "text": reply.text}


def measure(session, api_base, model, question, max_tokens, timeout) -> dict:
    out = timed_request(session, api_base, model, question, max_tokens, timeout)
    stream = streamed_request(session, api_base, model, question, max_tokens, timeout)
    out["ttft_s"] = stream["ttft_s"]
    out["stream_seconds"] = stream["seconds"]
    out["stream_chunks"] = stream["chunks"]
    out["stream_text"] = stream["text"]
    # Greedy: the streamed answer is the same generation (FastChat's deltas drop U+FFFD).
    out["stream_tok_s"] = out["tokens"] / stream["seconds"] if stream["seconds"] > 0 else 0.0
    out["stream_same_text"] = stream["text"] == out["text"].replace("\ufffd", "")
    return out


def warm_up(session, api_base, model, questions, max_tokens, timeout) -> None:
    """One untimed streamed request, on the first prompt that fits the model's context."""
    for question, _ in questions:
        try:
            streamed_request(session, api_base, model, question, max_tokens, timeout)
            return
        except APIError as e:
            if e.code != CONTEXT_OVERFLOW:
                raise


def summarize(rows: list[dict], models: list[str]) -> dict:
    med = statistics.median
    per_model = {}
    for m in models:
        runs = [r[m] for r in rows]
        per_model[m] = {"prompts": len(runs),
                        "tok_s": med(x["tok_s"] for x in runs),
                        "ttft_s": med(x["ttft_s"] for x in runs),
                        "stream_tok_s": med(x["stream_tok_s"] for x in runs),
                        "tokens": med(x["tokens"] for x in runs)}
    first, vs = models[0], {}
    for other in models[1:]:
        vs[other] = {"speedup": med(r[first]["tok_s"] / r[other]["tok_s"] for r in rows if r[other]["tok_s"] > 0),
                     "stream_speedup": med(r[first]["stream_tok_s"] / r[other]["stream_tok_s"]
                                           for r in rows if r[other]["stream_tok_s"] > 0),
                     "same_text_rate": sum(r["same_text"][other] for r in rows) / len(rows)}
    return {"models": per_model, "first": first, "vs": vs}


def one_line(summary: dict) -> str:
    parts = [f"{m} {s['tok_s']:.1f} tok/s (TTFT {1000 * s['ttft_s']:.0f} ms)" for m, s in summary["models"].items()]
    n = next(iter(summary["models"].values()))["prompts"]
    for other, v in summary["vs"].items():
        parts.append(f"{summary['first']}/{other} {v['speedup']:.2f}x, same text {v['same_text_rate']:.0%}")
    return f"API, median of {n} prompts: " + "; ".join(parts)


def under_concurrency(session, api_base: str, args, questions: list[str], rows: list[dict]) -> list[dict]:
    """Per level, the same planned requests (half streamed) from that many clients, one model
    after the other; each answer is checked against that model's one-at-a-time answer."""
    levels = []
    for level in args.concurrency:
        n = args.requests_per_level or max(len(questions), 4 * level)
        plan = build_plan(len(questions), n, [args.max_new_tokens], stream_fraction=0.5)
        entry = {"concurrency": level, "requests": n, "models": {}}
        for model in args.models:
            references = {(i, args.max_new_tokens): Reference(row[model]["text"], row[model]["stream_text"],
                                                              row[model]["tokens"])
                          for i, row in enumerate(rows)}

            def send(question, max_tokens, stream, model=model):
                return send_chat(session, api_base, model, question, max_tokens, stream, args.timeout)

            level_summary = run_level(send, questions, plan, references, level, progress=True)
            # per-request records only where something went wrong (the summary has the rest)
            level_summary["requests_detail"] = [r for r in level_summary["requests_detail"] if r["problems"]]
            entry["models"][model] = level_summary
        first = entry["models"][args.models[0]]["tok_s"]
        entry["tok_s_ratio"] = {m: round(first / s["tok_s"], 3) if s["tok_s"] > 0 else None
                                for m, s in entry["models"].items() if m != args.models[0]}
        print(level_line(entry), file=sys.stderr, flush=True)
        levels.append(entry)
    return levels


def level_line(entry: dict) -> str:
    parts = []
    for model, s in entry["models"].items():
        p50 = s["latency_s"]["p50"]
        bad = sum(s[k] for k in ("failed", "empty", "garbled", "mismatched"))
        parts.append(f"{model} {s['tok_s']:.1f} tok/s, latency p50 {'-' if p50 is None else f'{p50:.2f}s'}"
                     + (f", {bad} request(s) with a problem" if bad else ""))
    first = next(iter(entry["models"]))
    ratios = ", ".join(f"{first}/{m} {r:.2f}x" for m, r in entry["tok_s_ratio"].items() if r)
    return f"{entry['concurrency']} concurrent clients: " + "; ".join(parts) + (f"; {ratios}" if ratios else "")


def main(argv=None) -> dict:
    from fastchat_spec.bench.run import device_name

    args = parse_args(argv)
    api_base = args.api_base.rstrip("/")
    session = session_for(api_base)
    check_models(session, api_base, args.models)
    questions = load_questions(args.prompts, args.num_prompts)
    if not questions:
        sys.exit(f"no prompts: {args.prompts or 'held-out ShareGPT'} gave none")

    for model in args.models:  # warm-up: first request per worker (allocator, kernels, caches)
        warm_up(session, api_base, model, questions, args.max_new_tokens, args.timeout)

    rows, skipped, kept = [], [], []
    for i, (question, category) in enumerate(questions, 1):
        row = {"category": category, "question_chars": len(question)}
        try:
            for model in args.models:
                row[model] = measure(session, api_base, model, question, args.max_new_tokens, args.timeout)
        except APIError as e:
            if e.code != CONTEXT_OVERFLOW:
                raise
            skipped.append({"prompt": i, "reason": str(e)})
            print(f"[{i}/{len(questions)}] skipped: {e}", file=sys.stderr)
            continue
        row["same_text"] = {m: row[m]["text"] == row[args.models[0]]["text"] for m in args.models[1:]}
        rows.append(row)
        kept.append(question)
        print(f"[{i}/{len(questions)}] " + ", ".join(f"{m} {row[m]['tok_s']:.1f} tok/s" for m in args.models),
              file=sys.stderr, flush=True)
    if not rows:
        sys.exit("every prompt was skipped (longer than the model's context); pass shorter --prompts")

    summary = summarize(rows, args.models)
    result = {
        "device": device_name("cuda"),
        "date": datetime.date.today().isoformat(),
        "command": "python -m fastchat_spec.bench.api " + " ".join(sys.argv[1:] if argv is None else argv),
        "api_base": api_base,
        "models": args.models,
        "max_new_tokens": args.max_new_tokens,
        "temperature": 0,
        "prompts_source": args.prompts or "sharegpt-heldout",
        "summary": summary,
        "prompts": rows,
        "skipped": skipped,
    }
    if args.concurrency:
        result["concurrency"] = under_concurrency(session, api_base, args, kept, rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(one_line(summary))
    for level in result.get("concurrency", []):
        print(level_line(level))
    return result


if __name__ == "__main__":
    main()
