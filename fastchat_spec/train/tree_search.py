"""Search a checkpoint's candidate tree from the acceptance its drafter reaches on held-out data.

Greedy verification accepts at most one child of any node: the one holding the
base's own next token. So a node is accepted exactly when its rank path is the
one the true continuation takes, with the same probability in every tree that
holds it, and a tree's expected tokens per step is 1 + the sum of those
probabilities over its nodes. For every held-out position t this measures the
rank tuple (r_1, ..., r_D): r_k is the rank, among draft depth k's candidates,
of the token verification accepts there, with the path before it
teacher-forced, as it is on an accepted path. Counting every prefix of every
tuple gives each rank path's acceptance rate, and the best tree of N nodes is
the N most often taken paths (``--mode joint``, the default;
``generate/tree.py``: ``accepted_path_frequencies``, ``most_frequent_tree``).

Two estimates are reported for a tree. ``expected tokens/step`` averages over
every held-out position (1 + the sum of its paths' acceptance rates: what the
search maximises). ``replayed`` walks each answer as decoding does: a step at
t accepts the longest prefix of t's tuple that is in the tree and the next
step starts after it, so stretches where drafts land are crossed in few steps
and hard stretches weigh more, as they do in a measured tau; it is the lower
of the two wherever acceptance varies along the text.

``--mode independent`` grows the tree as the Medusa paper does (Cai et al.
2024, section 3.3.3): from each depth's marginal rank accuracies
``acc[depth][rank]``, assuming that depths err independently
(``generate/tree.build_tree``). Both modes report the measured (joint) estimate
of the new tree and of the checkpoint's current one, and the marginal table.

Teacher-forced predictions are each trainer's own: Medusa
(``train/medusa.medusa_head_predictions``), Hydra and Hydra++
(``train/hydra.hydra_predict``) and Chimera, both head layouts
(``ChimeraTraining.head_predictions``); tests check that they equal what the
engine's proposers draft. The target at each position is the base's own
argmax after the held-out tokens before it (what verification compares a
draft with), and the draft path is teacher-forced with the held-out tokens.
On the base's own greedy answers (``python -m fastchat_spec.train.distill``)
both are exactly what the engine sees, so use those; on human answers the
path leaves the base's greedy continuation wherever the human wrote something
else, and the estimate is only approximate.

``--dynamic`` (Medusa heads) adds, at 7, 15, 31, ... nodes, what a tree
chosen afresh at every step by the heads' own confidence would accept
(EAGLE-2's dynamic tree; ``train/dynamic_tree.py``) next to the best static tree.
For Hydra heads, whose depths read the drafted path, ``python -m
fastchat_spec.train.dynamic_tree --model-path CKPT`` drafts the full tree instead.

``--mode keep`` keeps the checkpoint's own paths and only rewrites them most
often accepted first. Every tree is written in that order, as Medusa's
published choice lists are: a busy batched step verifies only the first paths
of each row's tree (``Tree.within``; ``FASTCHAT_SPEC_STEP_TOKENS``), and the
report gives what 16, 32 and 64 of them accept.

The tree goes into the checkpoint's config.json under the key its method's
adapter reads (``medusa_choices``, ``hydra_choices`` or ``chimera_choices``).

    python -m fastchat_spec.train.tree_search --model-path CKPT --data_path heldout.json --num-nodes 63
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Sequence
from itertools import chain

import torch

from fastchat_spec.generate.tree import (
    Tree,
    accepted_path_frequencies,
    build_tree,
    expected_length,
    joint_expected_length,
    most_frequent_tree,
    most_likely_first,
    replayed_tokens_per_step,
)
from fastchat_spec.methods import method as method_entry
from fastchat_spec.train.data import read_fastchat_json
from fastchat_spec.train.dataset import IGNORE_TOKEN_ID, Collator, supervised_dataset
from fastchat_spec.train.dynamic_tree import DynamicTreeEstimate
from fastchat_spec.train.losses import shift_labels, target_ranks
from fastchat_spec.train.report import evaluate_heads, format_head_table
from fastchat_spec.train.trainer import base_hidden_states

# The config.json key each method's adapter reads its tree from (fastchat_spec/adapters/).
TREE_KEYS = {"medusa": "medusa_choices", "hydra": "hydra_choices", "chimera": "chimera_choices"}
MODES = ("joint", "independent", "keep")
PART_SIZES = (16, 32, 64)  # nodes per row of a busy batched step (generate/loop.py's FASTCHAT_SPEC_STEP_TOKENS)


# --------------------------------------------------------------------------- teacher-forced predictions
def _base_pass(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(base hidden states, labels whose every answer token is the base's argmax before it)."""
    hidden, logits = base_hidden_states(model.base, batch["input_ids"], batch["attention_mask"])
    labels = batch["labels"]
    greedy = torch.full_like(labels, IGNORE_TOKEN_ID)
    greedy[:, 1:] = torch.where(labels[:, 1:] != IGNORE_TOKEN_ID, logits[:, :-1].argmax(-1), IGNORE_TOKEN_ID)
    return hidden, greedy


def _medusa_predict(model, batch):
    from fastchat_spec.train.medusa import medusa_head_predictions

    hidden, greedy = _base_pass(model, batch)
    return medusa_head_predictions(model.base, model.drafter, hidden, greedy)


def _hydra_predict(model, batch):
    from fastchat_spec.train.hydra import HydraArguments, HydraTraining, hydra_predict

    # hydra_predict already targets the base's argmax; HydraArguments() adds no training noise
    return hydra_predict(HydraTraining(model.base, model.drafter, HydraArguments()).eval(), batch)


def _chimera_predict(model, batch):
    from fastchat_spec.train.chimera import ChimeraTraining

    hidden, greedy = _base_pass(model, batch)
    return ChimeraTraining(model.base, model.drafter).head_predictions(batch["input_ids"], greedy, hidden)


# method -> predict_fn(spec_model, batch) -> [(logits, targets)] per draft depth (see report.evaluate_heads).
PREDICTORS = {"medusa": _medusa_predict, "hydra": _hydra_predict, "chimera": _chimera_predict}


# --------------------------------------------------------------------------- rank tuples
def rank_grid(preds: list, labels: torch.Tensor) -> torch.Tensor:
    """(D, B, T) rank of each position's target at each draft depth; -1 where it has none.

    A depth's ``(logits, targets)`` come either per sequence (targets (B, T-k-2)
    for positions 0.., Chimera) or only at the positions that have a target, in
    order (targets (N,), Medusa and Hydra): those of ``shift_labels(labels, k + 2)``.
    """
    grid = torch.full((len(preds),) + tuple(labels.shape), -1, dtype=torch.long, device=labels.device)
    for k, (logits, targets) in enumerate(preds):
        ranks = target_ranks(logits, targets).to(labels.device)
        rows, cols = _target_positions(k, targets, labels, ranks.numel())
        grid[k, rows, cols] = ranks
    return grid


def top_log_prob_grid(preds: list, labels: torch.Tensor, top: int) -> torch.Tensor:
    """(D, B, T, top) each depth's best ``top`` log-probabilities at each position; -inf where it has no target."""
    grid = torch.full((len(preds),) + tuple(labels.shape) + (top,), float("-inf"), device=labels.device)
    for k, (logits, targets) in enumerate(preds):
        logits = logits.reshape(-1, logits.shape[-1])[targets.reshape(-1).to(logits.device) != IGNORE_TOKEN_ID]
        best = logits.float().log_softmax(-1).topk(top, dim=-1).values.to(labels.device)
        rows, cols = _target_positions(k, targets, labels, best.shape[0])
        grid[k, rows, cols] = best
    return grid


def _target_positions(k: int, targets: torch.Tensor, labels: torch.Tensor, predictions: int):
    """(rows, cols) of the positions depth ``k``'s predictions stand for, in their order."""
    if targets.dim() == 2:
        rows, cols = (targets != IGNORE_TOKEN_ID).nonzero(as_tuple=True)
    else:
        rows, cols = (shift_labels(labels, k + 2) != IGNORE_TOKEN_ID).nonzero(as_tuple=True)
    if rows.numel() != predictions:
        raise ValueError(f"depth {k + 1}: {predictions} predictions for {rows.numel()} positions with a "
                         "target; the predictor must keep the positions of shift_labels(labels, k + 2)")
    return rows.to(labels.device), cols.to(labels.device)


def rank_runs(grid: torch.Tensor, max_rank: int) -> list[list[tuple]]:
    """Each sequence's runs of consecutive positions with a depth-1 target (its answers), as the positions'
    rank tuples in order, each tuple cut before its first miss (no target, or a rank ``>= max_rank``)."""
    hit = grid.ge(0) & grid.lt(max_rank)
    lengths = hit.long().cumprod(0).sum(0).tolist()  # (B, T) leading hits over depth
    ranks, anchors = grid.permute(1, 2, 0).tolist(), grid[0].ge(0).tolist()  # (B, T, D), (B, T)
    runs = []
    for row_ranks, row_lengths, row_anchors in zip(ranks, lengths, anchors):
        run: list[tuple] = []
        for r, n, anchor in zip(row_ranks, row_lengths, row_anchors):
            if anchor:
                run.append(tuple(r[:n]))
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
    return runs


class RecordingPredictor:
    """A ``predict_fn`` for ``evaluate_heads`` that also records every position's rank tuple, by answer,
    and with ``dynamic`` feeds each position's top log-probabilities to a dynamic-tree estimate."""

    def __init__(self, predict, max_rank: int, dynamic: DynamicTreeEstimate | None = None):
        self.predict, self.max_rank, self.dynamic = predict, max_rank, dynamic
        self.runs: list[list[tuple]] = []

    def __call__(self, model, batch):
        preds = self.predict(model, batch)
        labels = batch["labels"]
        grid = rank_grid(preds, labels)
        self.runs += rank_runs(grid, self.max_rank)
        if self.dynamic is not None:
            anchors = grid[0] >= 0  # positions with a depth-1 target: where a step can start
            log_probs = top_log_prob_grid(preds, labels, self.dynamic.top)
            self.dynamic.add(log_probs.permute(1, 2, 0, 3)[anchors], grid.permute(1, 2, 0)[anchors])
        return preds


def measure(model, dataset, batch_size: int = 8, max_rank: int = 10, pad_token_id: int = 0,
            dynamic_sizes: Sequence[int] = ()) -> dict:
    """``{"heads", "rank_accuracy": acc[depth][rank], "rank_runs": [[tuple]], "rank_tuples": Counter}`` of a
    loaded SpecModel: the marginal table and every held-out position's rank tuple (by answer, and counted).
    With ``dynamic_sizes`` (Medusa only) also ``"dynamic": {nodes: expected tokens per step}``."""
    method = model.spec.method
    if method not in PREDICTORS:
        raise ValueError(f"tree_search measures {sorted(PREDICTORS)} checkpoints; this one is {method!r}, "
                         "which drafts no tree")
    if dynamic_sizes and method != "medusa":
        hint = "; for Hydra heads run python -m fastchat_spec.train.dynamic_tree" if method == "hydra" else ""
        raise ValueError(f"the dynamic-tree estimate needs Medusa heads (depths independent of the path); this "
                         f"checkpoint is {method!r}{hint}")
    dynamic = DynamicTreeEstimate(dynamic_sizes, max_rank) if dynamic_sizes else None
    recording = RecordingPredictor(PREDICTORS[method], max_rank, dynamic)
    measured = evaluate_heads(model, dataset, recording, Collator(pad_token_id), batch_size=batch_size,
                              max_rank=max_rank, print_table=False, desc="measuring heads")
    extra = {"dynamic": dynamic.tokens_per_step()} if dynamic else {}
    return {**measured, "rank_runs": recording.runs, "rank_tuples": Counter(chain.from_iterable(recording.runs)),
            **extra}


# --------------------------------------------------------------------------- the search
def choose_tree(measured: dict, num_nodes: int, mode: str = "joint", max_rank: int = 10,
                current: Tree | None = None):
    """(tree, path frequencies) for ``num_nodes`` nodes from ``measure``'s result, most likely path first.

    ``keep`` keeps ``current``'s paths and only puts them in measured order."""
    frequencies = accepted_path_frequencies(measured["rank_tuples"], max_rank)
    if mode == "joint":
        return most_frequent_tree(frequencies, num_nodes), frequencies
    if mode == "independent":
        return build_tree(measured["rank_accuracy"], num_nodes), frequencies
    if mode == "keep":
        if current is None:
            raise ValueError("--mode keep reorders the checkpoint's current tree: pass it")
        return Tree.from_paths(most_likely_first(current.paths, frequencies)), frequencies
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def parts_replayed(tree: Tree, runs) -> dict:
    """{nodes: replayed tokens per step} of the part of ``tree`` a busy batched step verifies per row."""
    return {str(n): round(replayed_tokens_per_step(tree.within(n)[0], runs), 4)
            for n in PART_SIZES if n < tree.num_nodes}


def write_tree(ckpt: str, tree: list, key: str = "medusa_choices") -> None:
    """Replace the tree under ``key`` in ``ckpt``/config.json, keeping every other key."""
    file = os.path.join(ckpt, "config.json")
    with open(file, encoding="utf-8") as f:
        config = json.load(f)
    config[key] = tree
    tmp = file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, file)


def load_spec_model(model_path: str, device: str | None = None):
    """(SpecModel, tokenizer) through FastChat's load_model, which picks our adapter."""
    from fastchat.model.model_adapter import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(model_path, device=device, num_gpus=1)
    if not hasattr(model, "spec"):
        raise ValueError(f"{model_path} is not a speculative checkpoint (no medusa_num_heads, hydra_num_heads or "
                         "chimera_num_heads in config.json); pass the checkpoint folder, not its base")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return model, tokenizer


def search(model_path: str, data_path: str, num_nodes: int = 63, max_len: int = 2048, batch_size: int = 8,
           device: str | None = None, max_conversations: int | None = None, write: bool = True,
           mode: str = "joint", max_rank: int = 10, dynamic: bool = False) -> dict:
    model, tokenizer = load_spec_model(model_path, device)
    name = model.spec.method
    if name not in TREE_KEYS:
        raise ValueError(f"tree_search searches trees for {sorted(TREE_KEYS)} checkpoints; {model_path} is "
                         f"{name!r}, which drafts no tree")
    current = method_entry(name).proposer_class.tree_for(model)  # the tree the engine drafts today
    # Count deep enough in rank to estimate the current tree whole.
    max_rank = max([max_rank] + [current.max_rank(d) for d in range(1, current.max_depth + 1)])
    convs = read_fastchat_json(data_path)[:max_conversations]
    dataset = supervised_dataset(tokenizer, convs, max_len)
    sizes = dynamic_sizes(num_nodes) if dynamic else ()
    measured = measure(model, dataset, batch_size, max_rank, pad_token_id=tokenizer.pad_token_id,
                       dynamic_sizes=sizes)
    tree, frequencies = choose_tree(measured, num_nodes, mode, max_rank, current)
    acc = measured["rank_accuracy"]
    key = TREE_KEYS[name]
    result = {
        "method": name, "mode": mode, "tree_key": key, key: tree.to_ranked_list(), "num_nodes": tree.num_nodes - 1,
        "expected_tokens_per_step": round(joint_expected_length(tree, frequencies), 4),
        "previous_expected_tokens_per_step": round(joint_expected_length(current, frequencies), 4),
        "previous_num_nodes": current.num_nodes - 1,
        "replayed_tokens_per_step": round(replayed_tokens_per_step(tree, measured["rank_runs"]), 4),
        "previous_replayed_tokens_per_step": round(replayed_tokens_per_step(current, measured["rank_runs"]), 4),
        "independent_estimate": round(expected_length(tree, acc), 4),
        # What a busy batched step verifies per row of the new and the previous tree (Tree.within).
        "parts_replayed_tokens_per_step": parts_replayed(tree, measured["rank_runs"]),
        "previous_parts_replayed_tokens_per_step": parts_replayed(current, measured["rank_runs"]),
        "positions": sum(measured["rank_tuples"].values()), "max_rank": max_rank,
        "heads": measured["heads"], "rank_accuracy": acc,
    }
    if dynamic:
        result["dynamic_vs_static"] = dynamic_comparison(measured, frequencies, sizes)
    if write:
        write_tree(model_path, result[key], key)
    return result


def dynamic_sizes(num_nodes: int) -> list[int]:
    """Node counts to compare at: powers of two minus one up to ``num_nodes``, and ``num_nodes`` itself."""
    sizes, n = [], 7
    while n < num_nodes:
        sizes.append(n)
        n = 2 * n + 1
    return sizes + [num_nodes]


def dynamic_comparison(measured: dict, frequencies: dict, sizes: Sequence[int]) -> list[dict]:
    """Per node count: the best static tree's and a dynamic tree's expected tokens per step, same positions."""
    rows = []
    for n in sizes:
        static = most_frequent_tree(frequencies, n)
        rows.append({"nodes": n, "static": round(joint_expected_length(static, frequencies), 4),
                     "dynamic": round(measured["dynamic"][n], 4)})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", "--model_path", required=True,
                   help="Medusa, Hydra or Chimera checkpoint folder (its config.json is rewritten).")
    p.add_argument("--data_path", "--data-path", required=True,
                   help="Held-out conversations in FastChat JSON (not the training file); best the base's own "
                        "answers from `python -m fastchat_spec.train.distill`.")
    p.add_argument("--num-nodes", "--num_nodes", type=int, default=63,
                   help="Tree nodes besides the root (Medusa's default trees have 63); more nodes cost verify time.")
    p.add_argument("--mode", choices=MODES, default="joint",
                   help="joint: the most often accepted rank paths (measured, no assumption); independent: the "
                        "Medusa paper's greedy growth from per-depth accuracies, assuming depths err independently; "
                        "keep: the checkpoint's own paths, only put most often accepted first (what a busy batched "
                        "step verifies of them is its first paths).")
    p.add_argument("--max-rank", type=int, default=10,
                   help="Candidates counted per depth (raised to cover the checkpoint's current tree).")
    p.add_argument("--max-len", "--model_max_length", type=int, default=2048, help="Tokens per conversation.")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-conversations", type=int, default=None, help="Use only the first N conversations.")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available).")
    p.add_argument("--dry-run", action="store_true", help="Print the tree without rewriting config.json.")
    p.add_argument("--dynamic", action="store_true",
                   help="Medusa only: also estimate a tree chosen per step by the heads' own confidence (EAGLE-2's "
                        "dynamic tree; fastchat_spec/train/dynamic_tree.py) against the best static tree, at "
                        "7, 15, 31, ... nodes up to --num-nodes.")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = search(args.model_path, args.data_path, args.num_nodes, args.max_len, args.batch_size, args.device,
                    args.max_conversations, write=not args.dry_run, mode=args.mode, max_rank=args.max_rank,
                    dynamic=args.dynamic)
    print(format_head_table(result["heads"]))
    print(f"expected tokens/step: {result['expected_tokens_per_step']:.3f} with the new {result['num_nodes']}-node "
          f"tree (previous tree: {result['previous_expected_tokens_per_step']:.3f})")
    print(f"  measured on {result['positions']} held-out positions; the previous tree has "
          f"{result['previous_num_nodes']} nodes; the {args.mode} tree under the independence assumption: "
          f"{result['independent_estimate']:.3f}")
    print(f"  replayed along the held-out answers (steps as decoding takes them, closer to a measured tau): "
          f"{result['replayed_tokens_per_step']:.3f} (previous tree: {result['previous_replayed_tokens_per_step']:.3f})")
    if result["num_nodes"] < args.num_nodes:
        print(f"  only {result['num_nodes']} rank paths (ranks below {result['max_rank']}) were ever accepted on "
              "this data: the tree has no more nodes")
    for label, parts in (("new", result["parts_replayed_tokens_per_step"]),
                         ("previous", result["previous_parts_replayed_tokens_per_step"])):
        if parts:
            print(f"  what a busy batched step verifies per row of the {label} tree, replayed: "
                  + ", ".join(f"{n} nodes {v:.3f}" for n, v in parts.items()))
    for row in result.get("dynamic_vs_static", []):
        print(f"  {row['nodes']:4d} nodes: best static tree {row['static']:.3f}, dynamic tree (chosen per step by "
              f"the heads' confidence) {row['dynamic']:.3f} expected tokens/step")
    key = result["tree_key"]
    print(("would write" if args.dry_run else f"wrote {key} to {os.path.join(args.model_path, 'config.json')}:"),
          json.dumps(result[key]))
    return result


if __name__ == "__main__":
    main()
