"""Assemble benchmarks/h100.json from the raw outputs of the GPU runs (never by hand).

  python scripts/make_benchmarks.py

Reads benchmarks/raw/steps_graph_*.json (python -m fastchat_spec.bench.steps) and
benchmarks/raw/pipeline/ (scripts/gpu_pipeline.sh: bench/*.json and train reports),
writes benchmarks/h100.json and prints the Markdown tables used in BENCHMARKS.md.
"""
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
RAW = os.path.join(ROOT, "raw")
PIPE = os.path.join(RAW, "pipeline")

METHODS = {  # name in h100.json -> checkpoint folder of the pipeline
    "medusa1": "medusa1-vicuna-small",
    "medusa2": "medusa2-vicuna-small",
    "hydra": "hydra-vicuna-small",
    "hydra++": "hydra-pp-vicuna-small",
    "chimera": "chimera-vicuna-small",
    "cllm": "cllm-vicuna-small",
}


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def steps_block():
    eager = load(os.path.join(RAW, "steps_graph_eager.json"))
    compiled = load(os.path.join(RAW, "steps_graph_compile.json"))
    out = {}
    for name, run in (("graph", eager), ("graph+compile", compiled)):
        for shape, r in run["shapes"].items():
            out[f"{shape.split('+')[0]}|{name}"] = {
                "hf_eager_step_ms": round(r["hf_eager_1_ms"], 3),
                "ar_step_ms": round(r["graph_1_ms"], 3),
                "tree_step_ms": round(r["graph_tree_ms"], 3),
                "tree_nodes": r["tree_nodes"],
                "hbm_floor_ms": round(r["hbm_floor_ms"], 3),
                "ar_over_floor": round(r["ar_over_floor"], 3),
                "tree_over_ar": round(r["tree_over_ar"], 3),
                "bandwidth_tb_s": round(run["bandwidth_tb_s"], 3),
            }
    return out


def method_block(name, folder):
    entry = {"checkpoint": folder}
    report_file = os.path.join(PIPE, f"train_{folder}.json")
    if os.path.exists(report_file):
        report = load(report_file)
        if "expected_tokens_per_step" in report:
            entry["tau_expected_from_training"] = round(report["expected_tokens_per_step"], 3)
        heads = report.get("heads") or report.get("heads_agreement_with_base")
        if heads:
            entry["heldout_head_top1"] = [round(h["top1"], 4) for h in heads.values()]
            entry["heldout_head_metric"] = ("agreement with the base's greedy token" if "heads_agreement_with_base"
                                            in report else "accuracy against the data")
        if "before" in report and "jacobi" in report.get("before", {}):
            entry["jacobi_tokens_per_step_before"] = report["before"]["jacobi"]["tokens_per_step"]
            entry["jacobi_tokens_per_step_after"] = report["after"]["jacobi"]["tokens_per_step"]
            entry["heldout_loss_before"] = report["before"]["heldout"]["loss"]
            entry["heldout_loss_after"] = report["after"]["heldout"]["loss"]
        if "before" in report and "heldout_base_loss" in report.get("before", {}):
            entry["base_heldout_loss_before"] = report["before"]["heldout_base_loss"]
            entry["base_heldout_loss_after"] = report["after"]["heldout_base_loss"]
    bench_file = os.path.join(PIPE, f"{folder}.json")
    if os.path.exists(bench_file):
        s = load(bench_file)["summary"]["all"]
        entry.update({
            "tau": round(s["tau"], 3),
            "tok_s": round(s["tok_s"], 1),
            "speedup_vs_fastchat": round(s["speedup_vs_fastchat"], 3),
            "speedup_vs_ar": round(s["speedup_vs_ar"], 3),
            "fastchat_tok_s": round(s["fastchat_tok_s"], 1),
            "ar_tok_s": round(s["ar_tok_s"], 1),
            "same_text_as_ar_rate": s.get("same_text_as_ar_rate"),
            "ms_per_step": {k: round(v, 3) for k, v in s.get("ms_per_step", {}).items()},
            "prompts": s["prompts"],
        })
    else:
        entry["benchmarked"] = False
    return entry


def main():
    steps = steps_block()
    eager7b = steps["llama7b|graph"]
    compiled7b = steps["llama7b|graph+compile"]
    commands = ["python -m fastchat_spec.bench.steps --shapes llama7b,small --context 512 --tree-nodes 64 "
                "--compile 0 (graph) / --compile 1 (graph+compile)",
                "SKIP_NANO=1 TOKENIZER=data/_base_trainer/tok8k BENCH_PROMPTS=8 HEAD_STEPS=400 CLLM_PROMPTS=800 "
                "BASE_STEPS='--num_train_epochs 1' bash scripts/gpu_pipeline.sh"]
    for folder in METHODS.values():
        bench_file = os.path.join(PIPE, f"{folder}.json")
        if os.path.exists(bench_file):
            commands.append(load(bench_file)["command"])
    methods = {name: method_block(name, folder) for name, folder in METHODS.items()}
    result = {
        "device": "NVIDIA H100 80GB HBM3 (lent nvidia-h100-x1; torch 2.11.0+cu130, transformers 4.57.6)",
        "date": "2026-11-24",
        "commands": commands,
        "methods": methods,
        "llama7b_shape": {
            "ar_step_ms": compiled7b["ar_step_ms"],
            "tree_step_ms": compiled7b["tree_step_ms"],
            "hbm_floor_ms": compiled7b["hbm_floor_ms"],
            "hf_eager_step_ms": eager7b["hf_eager_step_ms"],
            "ar_step_ms_graph_without_compile": eager7b["ar_step_ms"],
            "tree_step_ms_graph_without_compile": eager7b["tree_step_ms"],
        },
        "step_times": steps,
        "projection_llama7b_speedup": {
            name: round(m["tau"] * compiled7b["ar_step_ms"] / compiled7b["tree_step_ms"], 3)
            for name, m in methods.items() if "tau" in m
        },
        "multi_gpu": {"ddp_scaling": None, "note": "not run: multi-GPU kinds were withheld (see BENCHMARKS.md)"},
    }
    with open(os.path.join(ROOT, "h100.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print("| shape | forward | HF eager 1 tok | graph 1 tok | graph 64-node tree | floor | AR/floor | tree/AR |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in steps.items():
        shape, how = key.split("|")
        print(f"| {shape} | {how} | {r['hf_eager_step_ms']:.2f} ms | {r['ar_step_ms']:.2f} ms | "
              f"{r['tree_step_ms']:.2f} ms | {r['hbm_floor_ms']:.2f} ms | {r['ar_over_floor']:.2f} | "
              f"{r['tree_over_ar']:.2f} |")
    print()
    print("| method | tau (measured) | tau expected (training) | head-1..4 top-1 (held-out) | tok/s | vs FastChat | "
          "vs our AR | same text as AR (bf16) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in methods.items():
        top1 = ", ".join(f"{x:.2f}" for x in m.get("heldout_head_top1", [])) or "–"
        if "tau" in m:
            print(f"| {name} | {m['tau']:.2f} | {m.get('tau_expected_from_training', '–')} | {top1} | "
                  f"{m['tok_s']:.0f} | {m['speedup_vs_fastchat']:.2f}x | {m['speedup_vs_ar']:.2f}x | "
                  f"{m['same_text_as_ar_rate']:.0%} |")
        else:
            print(f"| {name} | not benchmarked | {m.get('tau_expected_from_training', '–')} | {top1} | – | – | – | – |")


if __name__ == "__main__":
    main()
