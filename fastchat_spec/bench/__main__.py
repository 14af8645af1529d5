"""Benchmark a speculative checkpoint against FastChat's stock decoder and our AR decoder.

Example:
  python -m fastchat_spec.bench --model-path CKPT --max-new-tokens 256 --out results.json

For every prompt, the same base model decodes with (1) the checkpoint's method,
(2) FastChat's stock ``generate_stream`` and (3) our CUDA-graphed autoregressive
decoder; tokens/s, tokens per verification step (tau) and per-prompt speedups
are recorded, and the medians are printed. A PNG chart of the speedup per
category is written next to the JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastchat_spec.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, nargs="+",
                   help="speculative checkpoint(s) (any layout our adapters load); several checkpoints must share "
                        "one base: they are timed prompt by prompt against the same baselines")
    p.add_argument("--prompts", help="JSONL with 'turns' (list of str) and optional 'category'; "
                                     "default: held-out ShareGPT first turns")
    p.add_argument("--num-prompts", type=int, default=20, help="how many prompts (default 20)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--baselines", default="fastchat,ar",
                   help="comma list of: fastchat (stock generate_stream), ar (our graphed AR decoder); '' for none")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=[None, "float32", "float16", "bfloat16"],
                   help="default: FastChat's choice for the device")
    p.add_argument("--name", default=None, nargs="+",
                   help="method name(s) in the results (default: the checkpoint's method, or the folder name "
                        "when several checkpoints are compared)")
    p.add_argument("--profile-prompts", type=int, default=3,
                   help="prompts also run with per-phase timing (draft/verify/accept), which syncs the device")
    p.add_argument("--fp32-reductions", action="store_true",
                   help="forbid reduced-precision (bf16/fp16) reductions in cuBLAS matmuls for every decoder "
                        "(fewer near-tie flips between the 1-token and the tree forward)")
    p.add_argument("--concurrency", default="",
                   help="comma list of client counts, e.g. 1,4,16,32: the prompts are also decoded by that many "
                        "concurrent clients through one engine loop (continuous batching); aggregate tok/s, "
                        "latency, tau and agreement with the 1-client texts go under 'serving'")
    p.add_argument("--out", required=True, help="results JSON; the chart goes to the same name with .png")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import fastchat_spec

    fastchat_spec.register()
    from fastchat.utils import get_context_length
    from tqdm import tqdm

    from fastchat_spec.bench.prompts import load_prompts
    from fastchat_spec.bench.run import device_name, run_engine, run_fastchat

    if args.fp32_reductions:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    baselines = [b for b in args.baselines.split(",") if b]
    for b in baselines:
        if b not in ("fastchat", "ar"):
            sys.exit(f"--baselines: unknown baseline {b!r}; use fastchat and/or ar")
    models, tokenizer = _load_models(args)
    first = next(iter(models.values()))
    context_len = get_context_length(first.config)
    prompts = load_prompts(args.model_path[0], args.prompts, args.num_prompts)
    eos = tokenizer.eos_token_id

    # Warm up every path once (graph capture, allocator) outside the timings.
    warm_ids = tokenizer(prompts[0].text).input_ids
    for model in models.values():
        run_engine(model, warm_ids, 16, args.temperature, eos)
    if "ar" in baselines:
        run_engine(first, warm_ids, 16, args.temperature, eos, method="ar")
    if "fastchat" in baselines:
        run_fastchat(first.base, tokenizer, prompts[0].text, 8, args.temperature, context_len)

    rows = []
    label = "bench " + ",".join(models)
    for i, prompt in enumerate(tqdm(prompts, desc=label, unit="prompt")):
        ids = tokenizer(prompt.text).input_ids[-(context_len - args.max_new_tokens - 1):]  # FastChat's cut
        row = {"category": prompt.category, "prompt_tokens": len(ids)}
        if "ar" in baselines:
            row["ar"] = _run_dict(run_engine(first, ids, args.max_new_tokens, args.temperature, eos, method="ar"))
        if "fastchat" in baselines:
            row["fastchat"] = _run_dict(run_fastchat(first.base, tokenizer, prompt.text, args.max_new_tokens,
                                                     args.temperature, context_len))
        for name, model in models.items():
            spec = run_engine(model, ids, args.max_new_tokens, args.temperature, eos)
            entry = row[name] = _run_dict(spec)
            if i < args.profile_prompts:
                entry["split_s"] = run_engine(model, ids, args.max_new_tokens, args.temperature, eos,
                                              profile=True).split
            if "ar" in baselines:
                entry["speedup_vs_ar"] = spec.tok_s / row["ar"]["tok_s"]
                if args.temperature == 0:
                    entry["same_text_as_ar"] = row["ar"]["text_ids"] == spec.text_ids
            if "fastchat" in baselines:
                entry["speedup_vs_fastchat"] = spec.tok_s / row["fastchat"]["tok_s"]
        rows.append(row)

    serving = _serving(args, models, tokenizer, prompts, eos) if args.concurrency else None

    methods = {name: {"model_path": path, "summary": _summary(rows, name, baselines)}
               for (name, path) in zip(models, args.model_path)}
    first_name = next(iter(models))
    result = {
        "device": device_name(args.device),
        "date": datetime.date.today().isoformat(),
        "command": "python -m fastchat_spec.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "model_path": args.model_path[0],
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "fp32_reductions": args.fp32_reductions,
        "summary": methods[first_name]["summary"],  # the first checkpoint's (one-checkpoint runs: the only one)
        "methods": methods,
        "prompts": rows,
    }
    if serving is not None:
        result["serving"] = serving
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    _chart(rows, list(models), os.path.splitext(args.out)[0] + ".png")
    for name in models:
        _print_summary(name, methods[name]["summary"])
    return result


def _serving(args, models, tokenizer, prompts, eos) -> dict:
    """Every checkpoint (and our AR decoder) at each concurrency level, over the same prompts."""
    from fastchat.utils import get_context_length

    from fastchat_spec.bench.run import run_concurrent

    try:
        levels = [int(c) for c in args.concurrency.split(",") if c]
    except ValueError:
        sys.exit(f"--concurrency: give a comma list of client counts, e.g. 1,4,16,32; got {args.concurrency!r}")
    if not levels or min(levels) < 1:
        sys.exit(f"--concurrency: client counts must be >= 1, got {args.concurrency!r}")
    context_len = get_context_length(next(iter(models.values())).config)
    ids = [tokenizer(p.text).input_ids[-(context_len - args.max_new_tokens - 1):] for p in prompts]
    first = next(iter(models.values()))
    runners = dict(models)
    if "ar" in args.baselines.split(","):
        runners["ar"] = first
    out = {}
    for name, model in runners.items():
        method = "ar" if name == "ar" and model is first and name not in models else None
        reference = None
        out[name] = {}
        for level in levels:
            result = run_concurrent(model, ids, args.max_new_tokens, args.temperature, eos, level, method)
            texts = result.pop("text_ids")
            if reference is None:
                reference = texts
            elif args.temperature == 0:
                result["same_text_as_first_level"] = sum(a == b for a, b in zip(texts, reference)) / len(texts)
            out[name][str(level)] = result
            print(f"serving {name} x{level}: {result['aggregate_tok_s']:.1f} tok/s aggregate, "
                  f"p50 latency {result['latency_p50_s']:.3f} s, tau {result['tau']:.2f}, "
                  f"{result['rows_per_step']:.1f} rows/step of {result['tree_nodes_per_row']:.0f} tree nodes, "
                  f"{result['ms_per_batched_step']:.2f} ms/step")
    return out


def _load_models(args) -> tuple:
    """{name: SpecModel} in command-line order, and the (shared) tokenizer; several must share one base."""
    from fastchat.model.model_adapter import load_model

    from fastchat_spec.spec_model import is_speculative

    dtype = getattr(torch, args.dtype) if args.dtype else None
    names = args.name or []
    if names and len(names) != len(args.model_path):
        sys.exit(f"--name: give one name per --model-path ({len(args.model_path)}), got {len(names)}")
    models, tokenizer, fingerprint = {}, None, None
    for i, path in enumerate(args.model_path):
        model, tok = load_model(path, device=args.device, dtype=dtype)
        if not is_speculative(model):
            sys.exit(f"{path} is not a speculative checkpoint (no Medusa/Hydra/Chimera/CLLM config found)")
        name = names[i] if names else (model.spec.method if len(args.model_path) == 1
                                       else os.path.basename(os.path.normpath(path)))
        if name in models:
            sys.exit(f"two checkpoints are both named {name!r}: pass --name")
        print_ = _base_fingerprint(model.base)
        if fingerprint is not None and print_ != fingerprint:
            sys.exit(f"{path} has another base than {args.model_path[0]}: benchmark them in separate runs "
                     "(the baselines run on the first checkpoint's base)")
        fingerprint = print_
        models[name] = model
        tokenizer = tokenizer or tok
    return models, tokenizer


def _base_fingerprint(base) -> tuple:
    """Cheap identity of a base's weights (first and last matrices and the config)."""
    with torch.no_grad():
        mats = [base.get_input_embeddings().weight, base.get_output_embeddings().weight,
                next(base.get_decoder().layers[-1].parameters())]
        return (base.config.to_json_string(), *(float(m.float().sum()) for m in mats))


def _run_dict(run) -> dict:
    return {"tokens": run.tokens, "seconds": run.seconds, "first_token_s": run.first_s, "steps": run.steps,
            "tok_s": run.tok_s, "tau": run.tau, "text_ids": run.text_ids}


REPEAT_N, REPETITIVE = 8, 0.3  # an answer is repetitive when 30% or more of its 8-grams occurred earlier in it


def repeated_share(ids: list[int], n: int = REPEAT_N) -> float:
    """Share of the answer's n-grams that already occurred earlier in it (0: no loop; near 1: one loop).

    A small base's greedy answers often loop, and a loop is easy to draft: tau on such answers says
    little about a larger model's, so the benchmark reports tau on varied and repetitive answers apart.
    """
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def _summary(rows, name, baselines) -> dict:
    from fastchat_spec.bench.run import median

    def block(sub):
        out = {"prompts": len(sub),
               "tau": median([r[name]["tau"] for r in sub]),
               "tok_s": median([r[name]["tok_s"] for r in sub]),
               "first_token_ms": _first_token_ms(sub, name)}
        if "fastchat" in baselines:
            out["speedup_vs_fastchat"] = median([r[name]["speedup_vs_fastchat"] for r in sub])
            out["fastchat_tok_s"] = median([r["fastchat"]["tok_s"] for r in sub])
        if "ar" in baselines:
            out["speedup_vs_ar"] = median([r[name]["speedup_vs_ar"] for r in sub])
            out["ar_tok_s"] = median([r["ar"]["tok_s"] for r in sub])
            out["ar_first_token_ms"] = _first_token_ms(sub, "ar")
            same = [r[name]["same_text_as_ar"] for r in sub if "same_text_as_ar" in r[name]]
            if same:
                out["same_text_as_ar_rate"] = sum(same) / len(same)
        splits = [r[name]["split_s"] for r in sub if "split_s" in r[name]]
        if splits:
            steps = sum(r[name]["steps"] for r in sub if "split_s" in r[name])
            out["ms_per_step"] = {k: 1000 * sum(s[k] for s in splits) / max(steps, 1) for k in splits[0]}
        return out

    summary = {"all": block(rows)}
    categories = sorted({r["category"] for r in rows})
    if len(categories) > 1:
        summary["by_category"] = {c: block([r for r in rows if r["category"] == c]) for c in categories}
    kinds = {"varied": [], "repetitive": []}
    for r in rows:
        kinds["repetitive" if repeated_share(r[name]["text_ids"]) >= REPETITIVE else "varied"].append(r)
    summary["by_repetition"] = {k: block(sub) if sub else {"prompts": 0} for k, sub in kinds.items()}
    return summary


def _first_token_ms(rows, name):
    """Median time to the first token, in ms (None for results written before it was recorded)."""
    from fastchat_spec.bench.run import median

    values = [1000 * r[name]["first_token_s"] for r in rows if "first_token_s" in r[name]]
    return median(values) if values else None


def _chart(rows, names, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return
    from fastchat_spec.bench.run import median

    categories = sorted({r["category"] for r in rows})
    keys = [k for k in ("speedup_vs_fastchat", "speedup_vs_ar") if k in rows[0][names[0]]]
    if not keys:
        return
    bars = [(name, key) for key in keys for name in names]
    fig, axes = plt.subplots(1, len(keys), figsize=(len(keys) * max(4, 1.2 * len(categories) * len(names) + 2), 3.4),
                             squeeze=False)
    width = 0.8 / len(names)
    for ax, key in zip(axes[0], keys):
        for j, name in enumerate(names):
            vals = [median([r[name][key] for r in rows if r["category"] == c]) for c in categories]
            xs = [i + j * width for i in range(len(categories))]
            ax.bar(xs, vals, width, label=name)
            for x, v in zip(xs, vals):
                ax.text(x, v, f"{v:.2f}x", ha="center", va="bottom", fontsize=7)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(categories))], categories)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_ylabel("median " + key.replace("_", " "))
        ax.legend(fontsize=7)
    fig.suptitle(f"speedup per category ({len(bars) // len(keys)} method(s))")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_summary(name, summary):
    s = summary["all"]
    parts = [f"{name}: tau {s['tau']:.2f}", f"{s['tok_s']:.1f} tok/s"]
    if "speedup_vs_fastchat" in s:
        parts.append(f"{s['speedup_vs_fastchat']:.2f}x vs FastChat ({s['fastchat_tok_s']:.1f} tok/s)")
    if "speedup_vs_ar" in s:
        parts.append(f"{s['speedup_vs_ar']:.2f}x vs our AR ({s['ar_tok_s']:.1f} tok/s)")
    if s.get("first_token_ms") is not None:
        ar = f" (our AR {s['ar_first_token_ms']:.1f})" if s.get("ar_first_token_ms") is not None else ""
        parts.append(f"first token {s['first_token_ms']:.1f} ms{ar}")
    if "ms_per_step" in s:
        parts.append("ms/step " + ", ".join(f"{k} {v:.2f}" for k, v in s["ms_per_step"].items()))
    varied = summary["by_repetition"]["varied"]
    if varied["prompts"]:
        parts.append(f"tau {varied['tau']:.2f} on the {varied['prompts']} answers that do not loop")
    print(" | ".join(parts))


if __name__ == "__main__":
    main()
