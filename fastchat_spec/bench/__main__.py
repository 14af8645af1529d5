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
import platform
import sys

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastchat_spec.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, help="speculative checkpoint (any layout our adapters load)")
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
    p.add_argument("--name", default=None, help="method name in the results (default: the checkpoint's method)")
    p.add_argument("--profile-prompts", type=int, default=3,
                   help="prompts also run with per-phase timing (draft/verify/accept), which syncs the device")
    p.add_argument("--out", required=True, help="results JSON; the chart goes to the same name with .png")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import fastchat_spec

    fastchat_spec.register()
    from fastchat.model.model_adapter import load_model
    from fastchat.utils import get_context_length
    from tqdm import tqdm

    from fastchat_spec.bench.prompts import load_prompts
    from fastchat_spec.bench.run import run_engine, run_fastchat
    from fastchat_spec.spec_model import is_speculative

    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tokenizer = load_model(args.model_path, device=args.device, dtype=dtype)
    if not is_speculative(model):
        sys.exit(f"{args.model_path} is not a speculative checkpoint (no Medusa/Hydra/Chimera/CLLM config found)")
    context_len = get_context_length(model.config)
    baselines = [b for b in args.baselines.split(",") if b]
    for b in baselines:
        if b not in ("fastchat", "ar"):
            sys.exit(f"--baselines: unknown baseline {b!r}; use fastchat and/or ar")
    name = args.name or model.spec.method
    prompts = load_prompts(args.model_path, args.prompts, args.num_prompts)
    eos = tokenizer.eos_token_id

    # Warm up every path once (graph capture, allocator) outside the timings.
    warm_ids = tokenizer(prompts[0].text).input_ids
    run_engine(model, warm_ids, 16, args.temperature, eos)
    if "ar" in baselines:
        run_engine(model, warm_ids, 16, args.temperature, eos, method="ar")
    if "fastchat" in baselines:
        run_fastchat(model.base, tokenizer, prompts[0].text, 8, args.temperature, context_len)

    rows = []
    for i, prompt in enumerate(tqdm(prompts, desc=f"bench {name}", unit="prompt")):
        ids = tokenizer(prompt.text).input_ids
        spec = run_engine(model, ids, args.max_new_tokens, args.temperature, eos)
        row = {"category": prompt.category, "prompt_tokens": len(ids), name: _run_dict(spec)}
        if i < args.profile_prompts:
            row[name]["split_s"] = run_engine(model, ids, args.max_new_tokens, args.temperature, eos,
                                              profile=True).split
        if "ar" in baselines:
            ar = run_engine(model, ids, args.max_new_tokens, args.temperature, eos, method="ar")
            row["ar"] = _run_dict(ar)
            row["speedup_vs_ar"] = spec.tok_s / ar.tok_s
            if args.temperature == 0:
                row["same_text_as_ar"] = ar.text_ids == spec.text_ids
        if "fastchat" in baselines:
            fc = run_fastchat(model.base, tokenizer, prompt.text, args.max_new_tokens, args.temperature, context_len)
            row["fastchat"] = _run_dict(fc)
            row["speedup_vs_fastchat"] = spec.tok_s / fc.tok_s
        rows.append(row)

    summary = _summary(rows, name, baselines)
    result = {
        "device": _device_name(args.device),
        "date": datetime.date.today().isoformat(),
        "command": "python -m fastchat_spec.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "model_path": args.model_path,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "summary": summary,
        "prompts": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    _chart(rows, name, os.path.splitext(args.out)[0] + ".png")
    _print_summary(name, summary)
    return result


def _run_dict(run) -> dict:
    return {"tokens": run.tokens, "seconds": run.seconds, "steps": run.steps, "tok_s": run.tok_s, "tau": run.tau}


def _summary(rows, name, baselines) -> dict:
    from fastchat_spec.bench.run import median

    def block(sub):
        out = {"prompts": len(sub),
               "tau": median([r[name]["tau"] for r in sub]),
               "tok_s": median([r[name]["tok_s"] for r in sub])}
        if "fastchat" in baselines:
            out["speedup_vs_fastchat"] = median([r["speedup_vs_fastchat"] for r in sub])
            out["fastchat_tok_s"] = median([r["fastchat"]["tok_s"] for r in sub])
        if "ar" in baselines:
            out["speedup_vs_ar"] = median([r["speedup_vs_ar"] for r in sub])
            out["ar_tok_s"] = median([r["ar"]["tok_s"] for r in sub])
            same = [r["same_text_as_ar"] for r in sub if "same_text_as_ar" in r]
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
    return summary


def _chart(rows, name, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return
    from fastchat_spec.bench.run import median

    categories = sorted({r["category"] for r in rows})
    keys = [k for k in ("speedup_vs_fastchat", "speedup_vs_ar") if k in rows[0]]
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(categories) + 2), 3.2))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        vals = [median([r[key] for r in rows if r["category"] == c]) for c in categories]
        xs = [i + j * width for i in range(len(categories))]
        ax.bar(xs, vals, width, label=key.replace("_", " "))
        for x, v in zip(xs, vals):
            ax.text(x, v, f"{v:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks([i + width * (len(keys) - 1) / 2 for i in range(len(categories))], categories)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel("median speedup")
    ax.set_title(f"{name}: speedup per category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _print_summary(name, summary):
    s = summary["all"]
    parts = [f"{name}: tau {s['tau']:.2f}", f"{s['tok_s']:.1f} tok/s"]
    if "speedup_vs_fastchat" in s:
        parts.append(f"{s['speedup_vs_fastchat']:.2f}x vs FastChat ({s['fastchat_tok_s']:.1f} tok/s)")
    if "speedup_vs_ar" in s:
        parts.append(f"{s['speedup_vs_ar']:.2f}x vs our AR ({s['ar_tok_s']:.1f} tok/s)")
    if "ms_per_step" in s:
        parts.append("ms/step " + ", ".join(f"{k} {v:.2f}" for k, v in s["ms_per_step"].items()))
    print(" | ".join(parts))


if __name__ == "__main__":
    main()
