"""On-policy CLLM training in rounds, with the speed and perplexity of every round.

Reference: Kou et al. 2024, "CLLMs: Consistency Large Language Models"
(arXiv 2403.00835), Sec. 3.2: Jacobi trajectories are collected with the
model being trained, so after a round of consistency training the next round's
trajectories come from the improved model (its fixed points and the states
that lead to them) and training goes on from there.

One round r = 1..R:
  1. collect: ``cllm_data`` decodes ``--prompts_per_round`` fresh training
     prompts of ``--domain`` (or ``--train_domain``) with the current model
     (the base in round 1), in n-token Jacobi windows, and keeps every
     window's trajectory;
  2. train: ``cllm`` consistency-trains the current model on them (global
     consistency loss + AR loss) for ``--max_steps`` and writes a CLLM
     checkpoint, ``OUT/round{r}/cllm-<base name>``, the next round's model;
  3. measure: ``cllm_eval`` loads that checkpoint through FastChat (our CLLM
     adapter) and decodes held-out prompts through the serving engine, as
     ``python -m fastchat_spec.bench`` does: greedy Jacobi tokens per step on
     the domain's held-out prompts and on general held-out prompts, and the
     held-out perplexity.
The base is measured the same way first (round 0, decoded with the same
window). ``OUT/summary.json`` is rewritten after every stage, so a run stopped
early still leaves what it measured; a table is printed at the end.

Targets (issue #15), checked for every round: domain tokens per step >=
``DOMAIN_TARGET``, general >= ``GENERAL_TARGET``, perplexity at most
``PPL_TOLERANCE`` above the base's.

Usage: ``python -m fastchat_spec.train.cllm_rounds --help``; flags it does not
know go to the trainer (any Hugging Face TrainingArguments flag).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import List, Optional, Sequence

import torch

from fastchat_spec.train.cllm_data import device_and_dtype

DOMAIN_TARGET = 1.6
GENERAL_TARGET = 1.3
PPL_TOLERANCE = 0.10
SUMMARY_FILE = "summary.json"


# ---------------------------------------------------------------- command line


def _parse_args(argv: Optional[Sequence[str]]) -> tuple[argparse.Namespace, List[str]]:
    from fastchat_spec.train.cllm import AR_TARGETS, make_parser
    from fastchat_spec.train.cllm_data import DTYPES
    from fastchat_spec.train.domain import DOMAINS

    p = argparse.ArgumentParser(
        prog="python -m fastchat_spec.train.cllm_rounds",
        description="R rounds of: collect Jacobi trajectories with the current model -> consistency-train it -> "
                    "measure Jacobi tokens per step (through the serving engine) on the domain's and on general "
                    "held-out prompts, and held-out perplexity. Writes OUT/summary.json. Flags not listed here go "
                    "to `python -m fastchat_spec.train.cllm` (Hugging Face TrainingArguments).")
    p.add_argument("--model", required=True,
                   help="the base (Hugging Face folder), e.g. fastchat_spec/models/vicuna-nano")
    p.add_argument("--train_data", required=True,
                   help="training conversations (FastChat JSON), e.g. train.json of `python -m "
                        "fastchat_spec.train.data` or train_code.json of `python -m fastchat_spec.train.domain`")
    p.add_argument("--heldout_data", required=True, help="held-out conversations (FastChat JSON), e.g. heldout.json")
    p.add_argument("--output_dir", required=True,
                   help="folder for every round's trajectories, checkpoint and the summary")
    p.add_argument("--domain", choices=list(DOMAINS), default="code",
                   help="domain of the training prompts and of the domain speed (fastchat_spec/train/domain.py); "
                        "default code")
    p.add_argument("--train_domain", choices=list(DOMAINS), default=None,
                   help="domain of the training prompts when it differs from --domain (e.g. all: train on every "
                        "kind of prompt, measure code and general)")
    p.add_argument("--rounds", type=int, default=3, help="collect -> train rounds (default 3)")
    p.add_argument("--prompts_per_round", type=int, default=1280,
                   help="fresh training prompts whose trajectories each round collects (default 1280)")
    p.add_argument("--window", type=int, default=16, help="n, the Jacobi window (n_token_seq_length); default 16")
    p.add_argument("--max_new_seq_len", type=int, default=256, help="answer tokens collected per prompt (default 256)")
    p.add_argument("--max_prompt_len", type=int, default=256,
                   help="training prompts longer than this many tokens are skipped (default 256)")
    p.add_argument("--collect_batch_size", type=int, default=None,
                   help="prompts Jacobi-decoded together when collecting; default 256 on a GPU, 4 on the CPU")
    p.add_argument("--max_steps", type=int, default=600, help="training steps per round (default 600)")
    p.add_argument("--batch_size", type=int, default=32, help="trajectory windows per training step (default 32)")
    p.add_argument("--learning_rate", type=float, default=1e-4, help="peak learning rate, cosine (default 1e-4)")
    p.add_argument("--ar_weight", type=float, default=10.0,
                   help="weight of the AR loss (default 10, as the paper's code)")
    p.add_argument("--ar_target", choices=list(AR_TARGETS), default="labels",
                   help="AR loss target: the dataset's answers (labels, default: the data the perplexity is "
                        "measured on) or the current model's greedy answer (teacher: sharpens the model on its own "
                        "answers; the small base's held-out perplexity rose 20%% in 0.4 epochs of it)")
    p.add_argument("--model_max_length", type=int, default=512,
                   help="tokens per training sequence and per perplexity conversation (default 512, the nano's)")
    p.add_argument("--eval_prompts", type=int, default=32,
                   help="held-out prompts per set, domain and general (default 32)")
    p.add_argument("--eval_tokens", type=int, default=128, help="tokens decoded per held-out prompt (default 128)")
    p.add_argument("--ppl_conversations", type=int, default=None,
                   help="held-out conversations for the perplexity (default all)")
    p.add_argument("--device", default=None, help="cuda or cpu; default cuda when available")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="dtype of collection and measurement; default bfloat16 on a GPU, float32 on the CPU "
                        "(training: the trainer's fp32 weights, bf16 autocast on a GPU)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of training and of the random Jacobi window starts (round r collects with seed + r)")
    args, trainer_args = p.parse_known_args(argv)
    _, unknown = make_parser().parse_known_args(trainer_args)
    if unknown:
        p.error(f"unknown flags {' '.join(unknown)}: neither this command nor the trainer "
                "(python -m fastchat_spec.train.cllm --help) takes them")
    for name in ("rounds", "prompts_per_round", "window", "max_steps", "batch_size", "eval_prompts", "eval_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not os.path.isdir(args.model):
        p.error(f"--model {args.model} is not a folder (a Hugging Face base, e.g. fastchat_spec/models/vicuna-nano)")
    for name in ("train_data", "heldout_data"):
        if not os.path.isfile(getattr(args, name)):
            p.error(f"--{name} {getattr(args, name)} does not exist; write it with "
                    "`python -m fastchat_spec.train.data --out-dir DIR`")
    return args, trainer_args


# ---------------------------------------------------------------- the stages


def prompts_for_round(convs: Sequence[dict], r: int, n: int) -> List[dict]:
    """Round r's ``n`` training conversations: fresh ones while they last, then from the start again."""
    if len(convs) <= n:
        return list(convs)
    start = ((r - 1) * n) % len(convs)
    chosen = list(convs[start : start + n])
    return chosen + list(convs[: n - len(chosen)])


def collect(args, model: str, convs: List[dict], rdir: str, r: int) -> dict:
    """Write this round's prompts and collect their Jacobi trajectories with ``model``."""
    from fastchat_spec.train import cllm_data
    from fastchat_spec.train.data import write_fastchat_json

    prompts_file = os.path.join(rdir, "prompts.json")
    write_fastchat_json(convs, prompts_file)
    argv = ["--model", model, "--data_path", prompts_file, "--output", os.path.join(rdir, "trajectories.json"),
            "--max_new_tokens", str(args.window), "--max_new_seq_len", str(args.max_new_seq_len),
            "--max_prompt_len", str(args.max_prompt_len), "--seed", str(args.seed + r)]  # fresh window starts
    # A nano-sized model is launch-bound: more prompts per forward cost almost nothing on a GPU.
    batch = args.collect_batch_size or (256 if _device(args).startswith("cuda") else 4)
    argv += ["--batch_size", str(batch), "--device", _device(args)]
    argv += ["--dtype", args.dtype] if args.dtype else []
    argv += ["--use_labels"] if args.ar_target == "labels" else []
    return cllm_data.main(argv)


def train(args, model: str, rdir: str, trainer_args: List[str]) -> tuple[str, dict]:
    """Consistency-train ``model`` on this round's trajectories; (checkpoint folder, train report)."""
    from fastchat_spec.train import cllm
    from fastchat_spec.train.arguments import flag_given

    out = os.path.join(rdir, "cllm-" + os.path.basename(os.path.normpath(args.model)))
    argv = ["--model_name_or_path", model, "--data_path", os.path.join(rdir, "trajectories.json"),
            "--output_dir", out, "--max_steps", str(args.max_steps),
            "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
            "--ar_weight", str(args.ar_weight), "--ar_target", args.ar_target,
            "--model_max_length", str(args.model_max_length), "--n_token_seq_length", str(args.window),
            "--save_dtype", "float32",  # the next round trains from these weights: no rounding between rounds
            "--seed", str(args.seed), "--eval_jacobi_prompts", "0"]
    defaults = {"logging_steps": "50", "disable_tqdm": "True", "dataloader_num_workers": "0"}
    if not _device(args).startswith("cuda"):
        defaults["use_cpu"] = "True"  # --device cpu holds for training too
    for key, value in defaults.items():
        if not flag_given(trainer_args, key):
            argv += ["--" + key, value]
    report = cllm.main(argv + list(trainer_args))
    return out, report or {}


def measure(args, model: str, heldout: List[dict]) -> dict:
    """Tokens per step (domain and general held-out prompts) and held-out perplexity of ``model``."""
    from fastchat_spec.train.cllm_eval import measure as measure_model

    domains = [args.domain, "all"] if args.domain != "all" else ["all"]
    return measure_model(model, heldout, domains, args.eval_prompts, args.eval_tokens, args.window,
                         _device(args), _dtype(args), args.ppl_conversations, args.model_max_length)


def _device(args) -> str:
    return device_and_dtype(args.device, args.dtype)[0]


def _dtype(args) -> torch.dtype:
    return device_and_dtype(args.device, args.dtype)[1]


# ---------------------------------------------------------------- the summary


def round_entry(r: int, measured: dict, domain: str, base: Optional[dict], seconds: dict,
                extra: Optional[dict] = None) -> dict:
    """One row of the summary: the headline numbers of a round, its targets and its timings."""
    ppl = measured["heldout"]["perplexity"]
    base_ppl = base["heldout"]["perplexity"] if base else ppl
    entry = {
        "round": r,
        "model": measured["model"],
        "served_as": measured["served_as"],
        "domain_tokens_per_step": measured[domain]["tokens_per_step"],
        "general_tokens_per_step": measured["all"]["tokens_per_step"],
        "perplexity": ppl,
        "perplexity_change": round(ppl / base_ppl - 1.0, 4),
        "targets_met": {
            f"domain >= {DOMAIN_TARGET}": measured[domain]["tokens_per_step"] >= DOMAIN_TARGET,
            f"general >= {GENERAL_TARGET}": measured["all"]["tokens_per_step"] >= GENERAL_TARGET,
            f"perplexity within {PPL_TOLERANCE:.0%}": ppl <= base_ppl * (1 + PPL_TOLERANCE),
        },
        "seconds": seconds,
        "measured": measured,
    }
    entry.update(extra or {})
    return entry


def write_summary(path: str, summary: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, path)


def print_table(summary: dict) -> None:
    domain = summary["config"]["domain"]
    print(f"\nCLLM rounds on {summary['config']['model']} (domain {domain}, window {summary['config']['window']}); "
          f"greedy Jacobi tokens per step through the engine, {summary['config']['eval_prompts']} held-out prompts "
          f"per set x {summary['config']['eval_tokens']} tokens")
    print(f"{'round':>5} | {domain + ' tok/step':>14} | {'general tok/step':>16} | {'perplexity':>16} | "
          f"{'collect s':>9} | {'train s':>7} | {'measure s':>9}")
    for e in summary["rounds"]:
        s = e["seconds"]
        print(f"{e['round']:>5} | {e['domain_tokens_per_step']:>14.3f} | {e['general_tokens_per_step']:>16.3f} | "
              f"{e['perplexity']:>8.2f} ({e['perplexity_change']:+.1%}) | {s.get('collect', 0):>9.1f} | "
              f"{s.get('train', 0):>7.1f} | {s.get('measure', 0):>9.1f}")
    last = summary["rounds"][-1]
    met = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in last["targets_met"].items())
    print(f"targets after round {last['round']}: {met}")


# ---------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Command line entry point; returns the summary also written to OUT/summary.json."""
    import sys

    from fastchat_spec.train.data import read_fastchat_json
    from fastchat_spec.train.domain import select

    args, trainer_args = _parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    summary_path = os.path.join(args.output_dir, SUMMARY_FILE)
    train_domain = args.train_domain or args.domain
    train_convs = select(read_fastchat_json(args.train_data), train_domain)
    if not train_convs:
        raise ValueError(f"{args.train_data} has no {train_domain} conversation (rules: fastchat_spec/train/domain.py)")
    heldout = read_fastchat_json(args.heldout_data)
    summary = {
        "command": "python -m fastchat_spec.train.cllm_rounds " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {**vars(args), "trainer_args": trainer_args, "device": _device(args), "dtype": str(_dtype(args)),
                   "train_conversations_in_domain": len(train_convs)},
        "targets": {"domain_tokens_per_step": DOMAIN_TARGET, "general_tokens_per_step": GENERAL_TARGET,
                    "perplexity_tolerance": PPL_TOLERANCE},
        "rounds": [],
    }
    print(f"{len(train_convs):,} {train_domain} training conversations; {args.rounds} rounds of "
          f"{args.prompts_per_round} prompts", flush=True)

    started = time.perf_counter()
    base = measure(args, args.model, heldout)
    summary["rounds"].append(round_entry(0, base, args.domain, None,
                                         {"measure": round(time.perf_counter() - started, 1)}))
    write_summary(summary_path, summary)
    _print_round(summary["rounds"][-1])

    current = args.model
    for r in range(1, args.rounds + 1):
        rdir = os.path.join(args.output_dir, f"round{r}")
        os.makedirs(rdir, exist_ok=True)
        seconds = {}
        t = time.perf_counter()
        collected = collect(args, current, prompts_for_round(train_convs, r, args.prompts_per_round), rdir, r)
        seconds["collect"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        current, report = train(args, current, rdir, trainer_args)
        seconds["train"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        measured = measure(args, current, heldout)
        seconds["measure"] = round(time.perf_counter() - t, 1)
        trained = {k: report.get(k) for k in ("records", "window", "train_loss", "train_seconds")}
        # Passes over the round's windows: much more than ~1 and the AR loss learns these answers by heart.
        trained["epochs"] = round(args.max_steps * args.batch_size / max(report.get("records") or 1, 1), 2)
        extra = {"trajectories": collected, "train": trained, "last_logged": _last_logged(report)}
        summary["rounds"].append(round_entry(r, measured, args.domain, base, seconds, extra))
        summary["total_seconds"] = round(time.perf_counter() - started, 1)
        write_summary(summary_path, summary)
        _print_round(summary["rounds"][-1])

    summary["total_seconds"] = round(time.perf_counter() - started, 1)
    write_summary(summary_path, summary)
    print_table(summary)
    print(f"wrote {summary_path}")
    return summary


def _last_logged(report: dict) -> dict:
    """The last training log entry with the two losses (how far consistency training got)."""
    logged = [h for h in report.get("log_history", []) if "consistency_loss" in h]
    return {k: logged[-1][k] for k in ("step", "consistency_loss", "ar_loss") if k in logged[-1]} if logged else {}


def _print_round(entry: dict) -> None:
    trained = f", {entry['train']['epochs']} epochs of its trajectories" if "train" in entry else ""
    print(f"round {entry['round']}: domain {entry['domain_tokens_per_step']:.3f} tok/step, general "
          f"{entry['general_tokens_per_step']:.3f} tok/step, perplexity {entry['perplexity']:.2f} "
          f"({entry['perplexity_change']:+.1%}){trained}; seconds {json.dumps(entry['seconds'])}", flush=True)


if __name__ == "__main__":
    main()
