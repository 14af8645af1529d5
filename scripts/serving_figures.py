"""Issue 13's serving figures from one GPU session's raw folder, as the JSON kept in benchmarks/h100.json.

Usage:
  python scripts/serving_figures.py benchmarks/raw/serving-h100-2026-12-06 [--into benchmarks/h100.json --key KEY]

The raw folder holds what the runs wrote (any part may be missing):
  nano/profile.txt         scripts/profile_stream.py: the engine loop alone and generate_stream in threads
  nano/spec_levels.json    scripts/serving_bench.sh levels through FastChat's API (with engine counters)
  nano/spec_reliability.json, small/spec_levels.json, small/train_report.json
  nano/stock_levels.json, small/stock_levels.json   the stock FastChat worker's levels, same run
  diag/overhead1.json, diag/overhead256.json   scripts/api_overhead.sh (TOKENS=1 and 256)
Prints the block; with --into, stores it under serving.KEY of that JSON file (other keys kept).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics


def read(path):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def profile_lines(path) -> dict:
    """{"loop": {clients: {...}}, "generate_stream": {clients: {...}}} from profile_stream.py's output."""
    out = {"loop": {}, "generate_stream": {}}
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("switch_ms") or "{" not in line:
                continue
            head, body = line[: line.index("{")].split(), json.loads(line[line.index("{"):])
            kind = "loop" if head[2] == "loop" else "generate_stream"
            out[kind][head[-1]] = body
    return out


def levels(run) -> dict:
    """Per level: tok/s, latency, TTFT, and what the engine loop did; streamed and not, apart."""
    if run is None:
        return {}
    out = {}
    for level in run["levels"]:
        by_mode = {}
        for stream in (True, False):
            seconds = [r["seconds"] for r in level["requests_detail"] if r["ok"] and r["stream"] == stream]
            if seconds:
                by_mode["streamed" if stream else "not_streamed"] = round(statistics.median(seconds), 4)
        out[str(level["concurrency"])] = {
            "requests": level["requests"], "ok": level["ok"], "failed": level["failed"],
            "mismatched": level["mismatched"], "garbled": level["garbled"], "empty": level["empty"],
            "tok_s": level["tok_s"], "latency_s": level["latency_s"], "ttft_s": level["ttft_s"],
            "latency_p50_s_by_mode": by_mode, "engine": level.get("engine"),
        }
    return out


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def figures(raw: str) -> dict:
    profile = profile_lines(os.path.join(raw, "nano", "profile.txt"))
    nano = levels(read(os.path.join(raw, "nano", "spec_levels.json")))
    small = levels(read(os.path.join(raw, "small", "spec_levels.json")))
    reliability = levels(read(os.path.join(raw, "nano", "spec_reliability.json")))
    stock = {name: levels(read(os.path.join(raw, name, "stock_levels.json"))) for name in ("nano", "small")}
    report = read(os.path.join(raw, "small", "train_report.json")) or {}
    loop1 = profile["loop"].get("1", {}).get("aggregate_tok_s")

    def api_ratios(lv: dict, stock_lv: dict) -> dict:
        one, many = lv.get("1"), lv.get("16")
        if not one or not many:
            return {}
        out = {"api_16_vs_api_1": ratio(many["tok_s"], one["tok_s"]),
               "api_p50_latency_16_vs_1": ratio(many["latency_s"]["p50"], one["latency_s"]["p50"]),
               "same_text_as_sequential_16": ratio(many["requests"] - many["mismatched"], many["requests"])}
        if stock_lv.get("16"):
            out["api_16_vs_stock_16"] = ratio(many["tok_s"], stock_lv["16"]["tok_s"])
        return out

    return {
        "nano_in_process": profile,
        "nano_api": nano,
        "nano_reliability": reliability,
        "small_api": small,
        "stock_api": {name: lv for name, lv in stock.items() if lv},
        "small_heads": {"expected_tokens_per_step": report.get("expected_tokens_per_step"),
                        "command": report.get("command")},
        "api_overhead_ms": {"tokens_1": read(os.path.join(raw, "diag", "overhead1.json")),
                            "tokens_256": read(os.path.join(raw, "diag", "overhead256.json"))},
        "ratios": {
            "nano": {**api_ratios(nano, stock["nano"]),
                     "api_1_vs_loop_1": ratio(nano.get("1", {}).get("tok_s"), loop1),
                     "loop_16_vs_loop_1": ratio(profile["loop"].get("16", {}).get("aggregate_tok_s"), loop1)},
            "small": api_ratios(small, stock["small"]),
        },
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw")
    p.add_argument("--into", help="a JSON file to store the block in, under serving.KEY")
    p.add_argument("--key", help="the key under 'serving' (with --into)")
    p.add_argument("--extra", default="{}", help="JSON object merged into the block (device, date, commands)")
    args = p.parse_args(argv)
    block = {**json.loads(args.extra), **figures(args.raw)}
    if args.into:
        if not args.key:
            p.error("--into needs --key")
        whole = read(args.into) or {}
        whole.setdefault("serving", {})[args.key] = block
        with open(args.into, "w", encoding="utf-8") as f:
            json.dump(whole, f, indent=2)
            f.write("\n")
    print(json.dumps(block["ratios"], indent=1))


if __name__ == "__main__":
    main()
