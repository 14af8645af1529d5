"""Assemble benchmarks/h100.json from the raw outputs of the GPU runs (never by hand).

  # copy a finished run's results (no weights) into a raw folder, then build from it
  python scripts/make_benchmarks.py --import runs/pipeline --raw benchmarks/raw/pipeline2
  # build again from the raw folder
  python scripts/make_benchmarks.py --raw benchmarks/raw/pipeline2 [--out benchmarks/h100.json]

The raw folder holds the pipeline's bench/*.json (python -m fastchat_spec.bench: several checkpoints
of one base per file; bench.api: worker_api.json; bench.steps: steps_llama7b_autotune.json) and PNGs,
train_<checkpoint>.json (each checkpoint's train_report.json), stages.log and tree_*.log.
The step times come from benchmarks/raw/steps_graph_*.json (--steps-dir).
Writes --out and prints the Markdown tables used in BENCHMARKS.md.
"""
import argparse
import glob
import json
import os
import re
import shutil

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BENCHMARKS = os.path.join(REPO, "benchmarks")

PIPELINE_COMMAND = ("TOKENIZER=fastchat_spec/models/vicuna-nano BENCH_PROMPTS=10 PHASE=train "
                    "bash scripts/gpu_pipeline.sh && bash scripts/gpu_finish.sh")
STEPS_COMMAND = ("python -m fastchat_spec.bench.steps --shapes llama7b,small --context 512 --tree-nodes 64 "
                 "--compile 0 (graph) / --compile 1 (graph+compile)")
AUTOTUNE_COMMAND = ("FASTCHAT_SPEC_COMPILE_MODE=max-autotune-no-cudagraphs python -m fastchat_spec.bench.steps "
                    "--shapes llama7b --context 512 --tree-nodes 64 --compile 1")
AUTOTUNE_KEY = "llama7b|graph+compile(max-autotune)"

METHODS = {  # name in h100.json -> checkpoint folder of the pipeline
    "medusa1": "medusa1-vicuna-small",
    "medusa2": "medusa2-vicuna-small",
    "hydra": "hydra-vicuna-small",
    "hydra++": "hydra-pp-vicuna-small",
    "chimera": "chimera-vicuna-small",
    "cllm": "cllm-vicuna-small",
    "cllm-untrained": "cllm-untrained-vicuna-small",
}
NANO_NAME, NANO_FOLDER = "medusa-vicuna-nano (this run's nano heads)", "medusa-vicuna-nano"
NANO_NOTE = ("nano heads trained by this pipeline run on the bundled vicuna-nano base; the bundled heads come from "
             "the first run of the same recipe (see fastchat_spec/models/medusa-vicuna-nano/README.md)")


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rounded(x, digits=3):
    return None if x is None else round(x, digits)


# ---------------------------------------------------------------- import


def import_run(run_dir, raw):
    """Copy a run folder's results (bench JSONs/PNGs, train reports, logs; no weights) into raw."""
    os.makedirs(raw, exist_ok=True)
    copies = [(p, os.path.basename(p)) for ext in ("json", "png")
              for p in glob.glob(os.path.join(run_dir, "bench", f"*.{ext}"))]
    copies += [(p, f"train_{os.path.basename(os.path.dirname(p))}.json")
               for p in glob.glob(os.path.join(run_dir, "*", "train_report.json"))
               if not os.path.islink(os.path.dirname(p))]
    copies += [(p, os.path.basename(p)) for p in glob.glob(os.path.join(run_dir, "tree_*.log"))]
    copies += [(p, "stages.log") for p in [os.path.join(run_dir, "stages.log")] if os.path.exists(p)]
    for src, name in sorted(copies, key=lambda c: c[1]):
        shutil.copyfile(src, os.path.join(raw, name))
        print(f"copied {src} -> {os.path.join(raw, name)}")


# ---------------------------------------------------------------- raw files


def bench_runs(raw):
    """{file name: bench JSON} for every python -m fastchat_spec.bench output in raw."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(raw, "*.json"))):
        if not os.path.basename(path).startswith("train_"):
            data = load(path)
            if "methods" in data:
                runs[os.path.basename(path)] = data
    return runs


def bench_summary(summary):
    s = summary["all"]
    return {
        "tau": rounded(s.get("tau")),
        "tok_s": rounded(s.get("tok_s"), 1),
        "speedup_vs_fastchat": rounded(s.get("speedup_vs_fastchat")),
        "speedup_vs_ar": rounded(s.get("speedup_vs_ar")),
        "fastchat_tok_s": rounded(s.get("fastchat_tok_s"), 1),
        "ar_tok_s": rounded(s.get("ar_tok_s"), 1),
        "same_text_as_ar_rate": s.get("same_text_as_ar_rate"),
        "ms_per_step": {k: round(v, 3) for k, v in s.get("ms_per_step", {}).items()},
        "prompts": s.get("prompts"),
    }


def bench_by_checkpoint(runs):
    """{checkpoint folder: {"bf16" | "fp32_reductions": summary fields + the run's file}}."""
    out = {}
    for file, run in runs.items():
        precision = "fp32_reductions" if run.get("fp32_reductions") else "bf16"
        for entry in run["methods"].values():
            checkpoint = os.path.basename(entry["model_path"].rstrip("/"))
            fields = {k: v for k, v in bench_summary(entry["summary"]).items() if v is not None}
            out.setdefault(checkpoint, {})[precision] = dict(fields, bench_run=file)
    return out


def head_accuracies(report):
    heads = report.get("heads") or report.get("heads_agreement_with_base")
    if not heads:
        return {}
    return {
        "heldout_head_top1": [round(h["top1"], 4) for h in heads.values()],
        "heldout_head_top5": [round(h["top5"], 4) for h in heads.values()],
        "heldout_head_metric": ("agreement with the base's greedy token" if "heads_agreement_with_base" in report
                                else "accuracy against the data"),
    }


def training_fields(report):
    entry = head_accuracies(report)
    if "expected_tokens_per_step" in report:
        entry["tau_expected_from_training"] = round(report["expected_tokens_per_step"], 3)
    before, after = report.get("before", {}), report.get("after", {})
    if "jacobi" in before:  # CLLM: Jacobi decoding and held-out loss of the base before/after
        entry["jacobi_tokens_per_step_before"] = before["jacobi"]["tokens_per_step"]
        entry["jacobi_tokens_per_step_after"] = after["jacobi"]["tokens_per_step"]
        entry["heldout_loss_before"] = before["heldout"]["loss"]
        entry["heldout_loss_after"] = after["heldout"]["loss"]
    if "heldout_base_loss" in before:  # Medusa-2: the base is trained too
        entry["base_heldout_loss_before"] = before["heldout_base_loss"]
        entry["base_heldout_loss_after"] = after["heldout_base_loss"]
    return entry


def tree_search_fields(log_path):
    """What train.tree_search printed: heads' agreement with the base's answers, expected tau."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    heads = re.findall(r"^head\d+\s+([\d.]+)\s+([\d.]+)\s+\d+\s*$", text, re.MULTILINE)
    tau = re.search(r"expected tokens/step: ([\d.]+) with the new (\d+)-node tree \(previous tree: ([\d.]+)\)", text)
    if not tau:
        return {}
    return {
        "head_top1": [float(t1) for t1, _ in heads],
        "head_top5": [float(t5) for _, t5 in heads],
        "head_metric": "agreement with the base's own answers to held-out prompts",
        "tree_nodes": int(tau.group(2)),
        "tau_expected": float(tau.group(1)),
        "tau_expected_previous_tree": float(tau.group(3)),
    }


def checkpoint_block(raw, folder, bench):
    entry = {"checkpoint": folder}
    timed = bench.get(folder, {})
    entry.update(timed.get("bf16", {"benchmarked": False}))
    report = os.path.join(raw, f"train_{folder}.json")
    if os.path.exists(report):
        entry.update(training_fields(load(report)))
    tree_log = os.path.join(raw, f"tree_{folder}.log")
    if os.path.exists(tree_log):
        entry["tree_search"] = tree_search_fields(tree_log) or {"log": "no expected tokens/step in the log"}
    if "fp32_reductions" in timed:
        entry["fp32_reductions"] = timed["fp32_reductions"]
    return entry


def shown_path(path):
    """A path relative to the repository when it lies inside it."""
    rel = os.path.relpath(path, REPO)
    return path if rel.startswith("..") else rel


# ---------------------------------------------------------------- step times


def step_row(shape, run):
    return {
        "hf_eager_step_ms": round(shape["hf_eager_1_ms"], 3),
        "ar_step_ms": round(shape["graph_1_ms"], 3),
        "tree_step_ms": round(shape["graph_tree_ms"], 3),
        "tree_nodes": shape["tree_nodes"],
        "hbm_floor_ms": round(shape["hbm_floor_ms"], 3),
        "ar_over_floor": round(shape["ar_over_floor"], 3),
        "tree_over_ar": round(shape["tree_over_ar"], 3),
        "bandwidth_tb_s": round(run["bandwidth_tb_s"], 3),
    }


def steps_block(steps_dir, raw):
    out = {}
    for how, file in (("graph", "steps_graph_eager.json"), ("graph+compile", "steps_graph_compile.json")):
        run = load(os.path.join(steps_dir, file))
        for shape, r in run["shapes"].items():
            out[f"{shape.split('+')[0]}|{how}"] = step_row(r, run)
    autotune = os.path.join(raw, "steps_llama7b_autotune.json")
    if os.path.exists(autotune):
        run = load(autotune)
        if "llama7b+compile" in run.get("shapes", {}):
            out[AUTOTUNE_KEY] = step_row(run["shapes"]["llama7b+compile"], run)
    return out


def llama7b_shape(steps):
    """The compiled Llama-7B step times; the autotuned ones where their AR step is lower."""
    used = "llama7b|graph+compile"
    if AUTOTUNE_KEY in steps and steps[AUTOTUNE_KEY]["ar_step_ms"] < steps[used]["ar_step_ms"]:
        used = AUTOTUNE_KEY
    eager, best = steps["llama7b|graph"], steps[used]
    return {
        "ar_step_ms": best["ar_step_ms"],
        "tree_step_ms": best["tree_step_ms"],
        "hbm_floor_ms": best["hbm_floor_ms"],
        "from": used,
        "hf_eager_step_ms": eager["hf_eager_step_ms"],
        "ar_step_ms_graph_without_compile": eager["ar_step_ms"],
        "tree_step_ms_graph_without_compile": eager["tree_step_ms"],
    }


# ---------------------------------------------------------------- worker API


def worker_api_block(raw):
    path = os.path.join(raw, "worker_api.json")
    if not os.path.exists(path):
        return None
    run = load(path)
    summary = run["summary"]
    spec = summary["first"]
    stock = next(iter(summary["vs"]))
    models, vs = summary["models"], summary["vs"][stock]
    return {
        "command": run["command"],
        "spec_model": spec,
        "stock_model": stock,
        "prompts": models[spec]["prompts"],
        "max_new_tokens": run.get("max_new_tokens"),
        "spec_tok_s": round(models[spec]["tok_s"], 1),
        "stock_tok_s": round(models[stock]["tok_s"], 1),
        "median_ratio": round(vs["speedup"], 3),
        "median_ratio_streamed": round(vs["stream_speedup"], 3),
        "same_text_rate": vs["same_text_rate"],
        "spec_ttft_ms": round(1000 * models[spec]["ttft_s"], 1),
        "stock_ttft_ms": round(1000 * models[stock]["ttft_s"], 1),
        "skipped_prompts": len(run.get("skipped", [])),
    }


# ---------------------------------------------------------------- assembly


def commands(runs, raw, worker_api):
    out = [PIPELINE_COMMAND, STEPS_COMMAND]
    out += [run["command"] for run in runs.values()]
    if worker_api:
        out.append(worker_api["command"])
    if os.path.exists(os.path.join(raw, "steps_llama7b_autotune.json")):
        out.append(AUTOTUNE_COMMAND)
    return out


def build(raw, steps_dir):
    runs = bench_runs(raw)
    bench = bench_by_checkpoint(runs)
    methods = {name: checkpoint_block(raw, folder, bench) for name, folder in METHODS.items()}
    steps = steps_block(steps_dir, raw)
    shape = llama7b_shape(steps)
    worker_api = worker_api_block(raw)
    result = {
        "device": sorted({run["device"] for run in runs.values()}),
        "date": max(run["date"] for run in runs.values()),
        "raw": shown_path(raw),
        "commands": commands(runs, raw, worker_api),
        "methods": methods,
        "nano": dict(checkpoint_block(raw, NANO_FOLDER, bench), name=NANO_NAME, note=NANO_NOTE),
        "llama7b_shape": shape,
        "step_times": steps,
        "projection_llama7b_speedup": {
            name: round(m["tau"] * shape["ar_step_ms"] / shape["tree_step_ms"], 3)
            for name, m in methods.items() if "tau" in m
        },
        "multi_gpu": {"ddp_scaling": None, "note": "not run: multi-GPU kinds were withheld (see BENCHMARKS.md)"},
    }
    if len(result["device"]) == 1:
        result["device"] = result["device"][0]
    if worker_api:
        result["worker_api"] = worker_api
    serving, reliability = serving_block(SERVING_RAW), reliability_block(SERVING_RAW)
    if serving:
        result["serving"] = serving
    if reliability:
        result["reliability"] = reliability
    return result


# ---------------------------------------------------------------- serving (issue 13) and reliability (issue 14)

SERVING_RAW = os.path.join(BENCHMARKS, "raw", "serving-h200-2026-12-03")
SERVING_COMMANDS = {
    "in_process": "FASTCHAT_SPEC_MAX_BATCH=32 python -m fastchat_spec.bench --model-path "
                  "fastchat_spec/models/medusa-vicuna-nano --prompts PROMPTS.jsonl --num-prompts 32 "
                  "--max-new-tokens 256 --baselines ar --concurrency 1,4,16,32 --profile-prompts 0 --out nano_bench.json",
    "api": "LEVELS=1,4,16,32 REQUESTS=48 RELIABILITY_REQUESTS=1000 RELIABILITY_CLIENTS=16 STOCK_LEVELS=1,16 "
           "STOCK_REQUESTS=32 LOAD_ARGS='--prompts PROMPTS.jsonl --max-tokens 128' bash scripts/serving_bench.sh "
           "fastchat_spec/models/medusa-vicuna-nano fastchat_spec/models/vicuna-nano OUT",
    "gpu_check": "python scripts/gpu_check.py",
}
SERVING_NOTE = ("PROMPTS.jsonl: 278 held-out ShareGPT first turns (fastchat_spec.train.data.heldout_first_turns). "
                "Through the API: FastChat's unchanged controller, model_worker --limit-worker-concurrency 32 and "
                "openai_api_server; temperature 0; every answer compared with its sequential answer.")


def api_levels(path):
    """Per concurrency level of a bench.load run: counts, aggregate tok/s and latency."""
    out = {}
    for level in load(path)["levels"]:
        lat = level["latency_s"]
        out[str(level["concurrency"])] = {
            "requests": level["requests"], "ok": level["ok"], "failed": level["failed"], "empty": level["empty"],
            "garbled": level["garbled"], "mismatched": level["mismatched"], "tok_s": rounded(level["tok_s"], 1),
            "latency_p50_s": rounded(lat["p50"]), "latency_p90_s": rounded(lat["p90"]),
            "latency_p99_s": rounded(lat["p99"]), "worker_rss_mib": level["rss"],
        }
    return out


def serving_block(raw):
    """Continuous batching on the bundled nano model: in-process and through FastChat's API, side by side."""
    if not os.path.isdir(raw):
        return None
    bench = load(os.path.join(raw, "nano_bench.json"))
    in_process = {name: {level: {k: rounded(v) for k, v in r.items()} for level, r in levels.items()}
                  for name, levels in bench["serving"].items()}
    spec = api_levels(os.path.join(raw, "spec_levels.json"))
    stock = api_levels(os.path.join(raw, "stock_levels.json"))
    targets = {
        "api_16_vs_api_1": rounded(spec["16"]["tok_s"] / spec["1"]["tok_s"]),
        "api_16_vs_stock_16": rounded(spec["16"]["tok_s"] / stock["16"]["tok_s"]),
        "api_p50_latency_16_vs_1": rounded(spec["16"]["latency_p50_s"] / spec["1"]["latency_p50_s"]),
        "api_1_vs_in_process_1": rounded(spec["1"]["tok_s"] / in_process["medusa"]["1"]["aggregate_tok_s"]),
        "in_process_16_vs_1": rounded(in_process["medusa"]["16"]["aggregate_tok_s"]
                                      / in_process["medusa"]["1"]["aggregate_tok_s"]),
        "in_process_p50_latency_16_vs_1": rounded(in_process["medusa"]["16"]["latency_p50_s"]
                                                  / in_process["medusa"]["1"]["latency_p50_s"]),
    }
    return {"device": bench["device"], "date": bench["date"], "raw": shown_path(raw), "commands": SERVING_COMMANDS,
            "note": SERVING_NOTE, "model": "fastchat_spec/models/medusa-vicuna-nano (float16)",
            "in_process_max_new_tokens": bench["max_new_tokens"], "in_process": in_process,
            "api_max_tokens": 128, "api_spec": spec, "api_stock": stock, "ratios": targets}


def reliability_block(raw):
    path = os.path.join(raw, "spec_reliability.json")
    if not os.path.exists(path):
        return None
    run = load(path)
    level = api_levels(path)
    return {"date": run["date"], "command": SERVING_COMMANDS["api"], "raw": shown_path(path),
            "requests": run["num_requests"], "stream_fraction": run["stream_fraction"], "by_clients": level}


# ---------------------------------------------------------------- Markdown


def fmt(x, spec=".2f", suffix=""):
    return "–" if x is None else f"{x:{spec}}{suffix}"


def print_steps_table(steps):
    print("| shape | forward | HF eager 1 tok | graph 1 tok | graph 64-node tree | floor | AR/floor | tree/AR |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in steps.items():
        shape, how = key.split("|")
        print(f"| {shape} | {how} | {r['hf_eager_step_ms']:.2f} ms | {r['ar_step_ms']:.2f} ms | "
              f"{r['tree_step_ms']:.2f} ms | {r['hbm_floor_ms']:.2f} ms | {r['ar_over_floor']:.2f} | "
              f"{r['tree_over_ar']:.2f} |")


def method_row(name, m):
    top1 = ", ".join(f"{x:.2f}" for x in m.get("heldout_head_top1", [])) or "–"
    if m.get("heldout_head_metric", "").startswith("agreement"):
        top1 += " ¹"
    tree = m.get("tree_search", {}).get("tau_expected")
    if "tau" not in m:
        return (f"| {name} | not benchmarked | {fmt(m.get('tau_expected_from_training'))} | {fmt(tree)} | {top1} "
                "| – | – | – | – |")
    return (f"| {name} | {m['tau']:.2f} | {fmt(m.get('tau_expected_from_training'))} | {fmt(tree)} | {top1} | "
            f"{m['tok_s']:.0f} | {fmt(m.get('speedup_vs_fastchat'), suffix='x')} | "
            f"{fmt(m.get('speedup_vs_ar'), suffix='x')} | {fmt(m.get('same_text_as_ar_rate'), '.0%')} |")


def print_methods_table(methods, nano):
    print("| method | τ (measured) | τ expected (training) | τ expected (tree search) | head 1..4 top-1 (held-out) "
          "| tok/s | vs FastChat | vs our AR | same text as our AR (bf16) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in methods.items():
        print(method_row(name, m))
    print(method_row(nano["name"], nano))
    print()
    print("¹ agreement with the base's greedy token; the others: accuracy against the data. "
          "Tree search: the tree grown from the heads' agreement with the base's answers (the benchmarked tree).")
    medusa2 = methods["medusa2"]
    if "base_heldout_loss_before" in medusa2:
        print(f"Medusa-2 base held-out loss: {medusa2['base_heldout_loss_before']:.3f} before, "
              f"{medusa2['base_heldout_loss_after']:.3f} after training.")


def print_cllm_table(methods):
    """The training report's before/after: before = the untrained base, after = the trained checkpoint."""
    trained = methods["cllm"]
    print("| CLLM | Jacobi tokens/step (training report) | held-out loss (training report) | τ (measured) | "
          "tok/s | vs our AR | same text as our AR |")
    print("|---|---|---|---|---|---|---|")
    for name, label, when in (("cllm-untrained", "untrained base (plain Jacobi)", "before"),
                              ("cllm", "consistency-trained", "after")):
        m = methods[name]
        print(f"| {label} | {fmt(trained.get(f'jacobi_tokens_per_step_{when}'), '.3f')} | "
              f"{fmt(trained.get(f'heldout_loss_{when}'), '.3f')} | {fmt(m.get('tau'))} | "
              f"{fmt(m.get('tok_s'), '.0f')} | {fmt(m.get('speedup_vs_ar'), suffix='x')} | "
              f"{fmt(m.get('same_text_as_ar_rate'), '.0%')} |")


def print_fp32_table(methods):
    rows = [(name, m) for name, m in methods.items() if "fp32_reductions" in m]
    if not rows:
        return
    print("| method | same text as our AR: bf16 | fp32 reductions | τ (fp32 reductions) "
          "| vs our AR (fp32 reductions) |")
    print("|---|---|---|---|---|")
    for name, m in rows:
        f32 = m["fp32_reductions"]
        print(f"| {name} | {fmt(m.get('same_text_as_ar_rate'), '.0%')} | {fmt(f32.get('same_text_as_ar_rate'), '.0%')} "
              f"| {fmt(f32.get('tau'))} | {fmt(f32.get('speedup_vs_ar'), suffix='x')} |")


def print_worker_api_table(api):
    if not api:
        print("(no worker_api.json in the raw folder: the OpenAI-API benchmark did not run or failed)")
        return
    print(f"| through FastChat's OpenAI API ({api['prompts']} prompts, medians) | tok/s | TTFT |")
    print("|---|---|---|")
    print(f"| {api['spec_model']} | {api['spec_tok_s']:.1f} | {api['spec_ttft_ms']:.0f} ms |")
    print(f"| {api['stock_model']} | {api['stock_tok_s']:.1f} | {api['stock_ttft_ms']:.0f} ms |")
    print(f"| median per-prompt ratio | {api['median_ratio']:.2f}x (streamed {api['median_ratio_streamed']:.2f}x) "
          f"| same text: {api['same_text_rate']:.0%} |")


def print_tables(result):
    methods = result["methods"]
    print_steps_table(result["step_times"])
    print()
    print_methods_table(methods, result["nano"])
    print()
    print_cllm_table(methods)
    print()
    print_fp32_table(methods)
    print()
    print_worker_api_table(result.get("worker_api"))
    print()
    shape = result["llama7b_shape"]
    print(f"Llama-7B shape from {shape['from']}: AR {shape['ar_step_ms']} ms, tree {shape['tree_step_ms']} ms, "
          f"floor {shape['hbm_floor_ms']} ms")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", default=os.path.join(BENCHMARKS, "raw", "pipeline2"), help="raw folder to build from")
    p.add_argument("--import", dest="import_run", metavar="RUN_DIR",
                   help="first copy this run folder's results (e.g. runs/pipeline) into --raw")
    p.add_argument("--steps-dir", default=os.path.join(BENCHMARKS, "raw"), help="where steps_graph_*.json are")
    p.add_argument("--out", default=os.path.join(BENCHMARKS, "h100.json"))
    args = p.parse_args(argv)
    if args.import_run:
        import_run(args.import_run, args.raw)
    result = build(args.raw, args.steps_dir)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}\n")
    print_tables(result)


if __name__ == "__main__":
    main()
