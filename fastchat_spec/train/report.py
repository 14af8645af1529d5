"""After training: held-out accuracy of every head, the tree grown from it, and ``train_report.json``.

``evaluate_heads`` counts, for every head, how often its rank-r candidate is
the right token on held-out data (``acc[depth][rank]``, the input of
``fastchat_spec.generate.tree.build_tree``); ``measure_heads`` turns that into
report entries and the checkpoint's tree; ``save_and_report`` gathers the
weights and writes the checkpoint and the report from the main process.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence

import torch
import transformers
from torch import nn

from fastchat_spec.train.dataset import IGNORE_TOKEN_ID
from fastchat_spec.train.losses import target_ranks
from fastchat_spec.train.trainer import train_until_stopped

REPORT_FILE = "train_report.json"


# --------------------------------------------------------------------------- held-out accuracy
@torch.no_grad()
def evaluate_heads(model: nn.Module, dataset, predict_fn: Callable, collator: Callable, device=None,
                   batch_size: int = 8, max_rank: int = 10, names: Sequence[str] | None = None,
                   print_table: bool = True, desc: str = "held-out accuracy") -> dict:
    """Held-out hits of every head, token-weighted and summed over processes.

    ``predict_fn(model, batch) -> [(logits (..., V), targets (...)), ...]`` per head
    (targets aligned with the logits, ``IGNORE_TOKEN_ID`` where there is none).
    Returns ``{"heads": {name: {"top1", "top5", "tokens"}}, "rank_accuracy": acc}``
    with ``acc[depth][rank]`` = share of tokens whose right answer is that head's
    rank-th candidate. Every process evaluates its own shard of ``dataset``.
    """
    from tqdm import tqdm

    device = device or next(model.parameters()).device
    rank, world = _dist_rank_world()
    # Every process runs the same number of batches (sharded models gather weights in lockstep);
    # a shard that is one short repeats its first example with no targets.
    per_process = -(-len(dataset) // world)
    indices = list(range(rank, len(dataset), world))
    filler = per_process - len(indices)
    was_training = model.training
    model.eval()
    hits, tokens = None, None
    for start in tqdm(range(0, per_process, batch_size), desc=desc, disable=rank != 0):
        examples = [dataset[i] for i in indices[start:start + batch_size]]
        pad = min(batch_size - len(examples), filler)
        examples += [_without_targets(dataset[0])] * max(pad, 0)
        batch = collator(examples)
        batch = {k: v.to(device) for k, v in batch.items()}
        preds = predict_fn(model, batch)
        if hits is None:
            hits = torch.zeros(len(preds), max_rank, dtype=torch.float64, device=device)
            tokens = torch.zeros(len(preds), dtype=torch.float64, device=device)
        for h, (logits, targets) in enumerate(preds):
            ranks = target_ranks(logits, targets)
            tokens[h] += ranks.numel()
            hits[h] += torch.bincount(ranks[ranks < max_rank], minlength=max_rank).to(hits.dtype)
    model.train(was_training)
    if hits is None:
        raise ValueError("evaluate_heads got an empty dataset; pass held-out conversations (--eval_data_path)")
    if world > 1:
        torch.distributed.all_reduce(hits)
        torch.distributed.all_reduce(tokens)
    acc = (hits / tokens.clamp_min(1)[:, None]).tolist()
    names = list(names or [f"head{h}" for h in range(len(acc))])
    result = {"heads": {}, "rank_accuracy": acc}
    for name, row, n in zip(names, acc, tokens.tolist()):
        result["heads"][name] = {"top1": round(sum(row[:1]), 4), "top5": round(sum(row[:5]), 4), "tokens": int(n)}
    if print_table and rank == 0:
        print(format_head_table(result["heads"]))
    return result


def _without_targets(example: dict) -> dict:
    return {**example, "labels": torch.full_like(example["labels"], IGNORE_TOKEN_ID)}


def format_head_table(heads: dict) -> str:
    lines = [f"{'head':<10}{'top-1':>8}{'top-5':>8}{'tokens':>10}"]
    for name, m in heads.items():
        lines.append(f"{name:<10}{m['top1']:>8.3f}{m['top5']:>8.3f}{m['tokens']:>10d}")
    return "\n".join(lines)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------- the tree
def tree_from_accuracy(acc: list, num_nodes: int) -> tuple[list, float]:
    """(tree as a list of paths, most likely first; expected tokens per step) grown from ``acc[depth][rank]``."""
    from fastchat_spec.generate.tree import build_tree, expected_length

    tree = build_tree(acc, num_nodes)
    return tree.to_ranked_list(), expected_length(tree, acc)


def grown_tree(accuracy: dict | None, num_heads: int, num_nodes: int):
    """(tree paths, expected tokens per step) grown from held-out rank accuracies; the default tree without them."""
    from fastchat_spec.generate.tree import default_tree

    if accuracy is None:  # nothing held out: the engine's assumed profile
        return default_tree(num_heads, num_nodes).to_ranked_list(), None
    tree, expected = tree_from_accuracy(accuracy["rank_accuracy"], num_nodes)
    return tree, round(expected, 4)


def train_and_measure(trainer: transformers.Trainer, heldout, predict_fn: Callable, num_heads: int, num_nodes: int,
                      heads_key: str = "heads", tree_key: str = "tree") -> dict:
    """Train (until done or SIGTERM), then ``measure_heads``: report entries with ``train_loss``,
    ``stopped_by_sigterm_at_step`` (None when training ran its course) and, on a GPU, ``peak_gpu_memory_gib``."""
    output, stopped_at = train_until_stopped(trainer)
    out = {"train_loss": output.training_loss, "stopped_by_sigterm_at_step": stopped_at}
    if torch.cuda.is_available():
        out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out.update(measure_heads(trainer, heldout, predict_fn, num_heads, num_nodes, heads_key, tree_key))
    return out


def measure_heads(trainer: transformers.Trainer, heldout, predict_fn: Callable, num_heads: int, num_nodes: int,
                  heads_key: str = "heads", tree_key: str = "tree") -> dict:
    """After training: held-out loss, per-head top-k and the tree grown from them (the default tree
    without held-out data), as report entries (``eval``, ``heads_key``, ``rank_accuracy``, ``tree_key``,
    ``expected_tokens_per_step``)."""
    out, accuracy = {}, None
    if heldout is not None:
        out["eval"] = trainer.evaluate()
        accuracy = evaluate_heads(trainer.accelerator.unwrap_model(trainer.model), heldout, predict_fn,
                                  trainer.data_collator, batch_size=trainer.args.per_device_eval_batch_size)
    tree, expected = grown_tree(accuracy, num_heads, num_nodes)
    out.update({heads_key: accuracy["heads"] if accuracy else None,
                "rank_accuracy": accuracy["rank_accuracy"] if accuracy else None,
                tree_key: tree, "expected_tokens_per_step": expected})
    return out


# --------------------------------------------------------------------------- writing
def save_and_report(trainer: transformers.Trainer, out_dir: str, write_checkpoint: Callable[[dict, str], None],
                    report: dict) -> dict | None:
    """Gather the weights, let the main process write the checkpoint and ``train_report.json``.

    ``write_checkpoint(state_dict, out_dir)`` gets the training module's full
    state dict on CPU. The report gets the command line, the Trainer's log
    history and the arguments added. Returns the report on the main process.
    """
    state = trainer.accelerator.get_state_dict(trainer.model)  # collective: every process calls it
    result = None
    if trainer.is_world_process_zero():
        state = {k: v.detach().cpu() for k, v in state.items()}
        os.makedirs(out_dir, exist_ok=True)
        write_checkpoint(state, out_dir)
        result = {
            "command": " ".join([os.path.basename(sys.executable), "-m", _module_name()] + sys.argv[1:]),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "world_size": trainer.args.world_size,
            **report,
            "log_history": trainer.state.log_history,
            "training_args": trainer.args.to_dict(),
        }
        with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
    trainer.accelerator.wait_for_everyone()
    return result


def finish(trainer: transformers.Trainer, write_checkpoint: Callable[[dict, str], None], report: dict) -> dict | None:
    """``save_and_report`` to ``--output_dir``; the main process prints where it went and its tree's expected tau."""
    out_dir = trainer.args.output_dir
    final = save_and_report(trainer, out_dir, write_checkpoint, report)
    if final is not None:
        expected = final.get("expected_tokens_per_step")
        print(f"wrote {out_dir}" + (f" (expected tokens/step with its tree: {expected:.2f})" if expected else ""))
    return final


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else os.path.basename(sys.argv[0])
