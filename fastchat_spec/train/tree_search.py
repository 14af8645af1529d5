"""Grow a checkpoint's candidate tree from the accuracies its heads reach on held-out data.

The Medusa paper (Cai et al. 2024, section 3.3.3) measures, for every head, how
often its rank-r candidate is the right token, and builds the sparse tree
greedily by expected accepted length under the assumption that heads err
independently. ``head_accuracies`` measures ``acc[depth][rank]``;
``fastchat_spec.generate.tree.build_tree`` grows the tree; the tree goes into the
checkpoint's config.json as ``medusa_choices``, which the engine uses by default.

    python -m fastchat_spec.train.tree_search --model-path CKPT --data_path heldout.json --num-nodes 63
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from fastchat_spec.train.data import read_fastchat_json
from fastchat_spec.train.dataset import Collator, supervised_dataset
from fastchat_spec.train.report import evaluate_heads, format_head_table, tree_from_accuracy
from fastchat_spec.train.trainer import base_hidden_states

TREE_KEY = "medusa_choices"


def _medusa_predict(model, batch):
    from fastchat_spec.train.medusa import medusa_head_predictions

    hidden, _ = base_hidden_states(model.base, batch["input_ids"], batch["attention_mask"], with_logits=False)
    return medusa_head_predictions(model.base, model.drafter, hidden, batch["labels"])


# method -> predict_fn(spec_model, batch) -> [(logits, targets)] per draft depth (see report.evaluate_heads).
PREDICTORS = {"medusa": _medusa_predict}


def head_accuracies(model, dataset, batch_size: int = 8, max_rank: int = 10, pad_token_id: int = 0) -> dict:
    """``{"rank_accuracy": acc[depth][rank], "heads": {name: top1/top5/tokens}}`` of a loaded SpecModel."""
    method = model.spec.method
    if method not in PREDICTORS:
        raise ValueError(f"tree_search measures {sorted(PREDICTORS)} checkpoints; this one is {method!r}. "
                         "Its trainer writes its tree itself.")
    return evaluate_heads(model, dataset, PREDICTORS[method], Collator(pad_token_id), batch_size=batch_size,
                          max_rank=max_rank, print_table=False, desc="measuring heads")


def write_tree(ckpt: str, tree: list) -> None:
    """Replace the tree in ``ckpt``/config.json, keeping every other key."""
    file = os.path.join(ckpt, "config.json")
    with open(file, encoding="utf-8") as f:
        config = json.load(f)
    config[TREE_KEY] = tree
    tmp = file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, file)


def search(model_path: str, data_path: str, num_nodes: int = 63, max_len: int = 2048, batch_size: int = 8,
           device: str | None = None, max_conversations: int | None = None, write: bool = True) -> dict:
    from fastchat.model.model_adapter import load_model

    from fastchat_spec.generate.tree import Tree, default_tree, expected_length

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(model_path, device=device, num_gpus=1)
    if not hasattr(model, "spec"):
        raise ValueError(f"{model_path} is not a speculative checkpoint (no medusa_num_heads or similar in "
                         "config.json); pass the checkpoint folder, not its base")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    convs = read_fastchat_json(data_path)[:max_conversations]
    dataset = supervised_dataset(tokenizer, convs, max_len)
    measured = head_accuracies(model, dataset, batch_size, pad_token_id=tokenizer.pad_token_id)
    acc = measured["rank_accuracy"]
    tree, expected = tree_from_accuracy(acc, num_nodes)
    old = Tree.from_paths(model.spec.tree) if model.spec.tree else default_tree(model.spec.num_heads)
    result = {"medusa_choices": tree, "expected_tokens_per_step": round(expected, 4),
              "previous_expected_tokens_per_step": round(expected_length(old, acc), 4),
              "heads": measured["heads"], "rank_accuracy": acc}
    if write:
        write_tree(model_path, tree)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", "--model_path", required=True, help="Medusa checkpoint folder (rewritten).")
    p.add_argument("--data_path", "--data-path", required=True,
                   help="Held-out conversations in FastChat JSON (not the training file).")
    p.add_argument("--num-nodes", "--num_nodes", type=int, default=63,
                   help="Tree nodes besides the root (Medusa's default trees have 63); more nodes cost verify time.")
    p.add_argument("--max-len", "--model_max_length", type=int, default=2048, help="Tokens per conversation.")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-conversations", type=int, default=None, help="Use only the first N conversations.")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available).")
    p.add_argument("--dry-run", action="store_true", help="Print the tree without rewriting config.json.")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = search(args.model_path, args.data_path, args.num_nodes, args.max_len, args.batch_size, args.device,
                    args.max_conversations, write=not args.dry_run)
    print(format_head_table(result["heads"]))
    print(f"expected tokens/step: {result['expected_tokens_per_step']:.3f} with the new {args.num_nodes}-node tree "
          f"(previous tree: {result['previous_expected_tokens_per_step']:.3f})")
    print(("would write" if args.dry_run else f"wrote {TREE_KEY} to {os.path.join(args.model_path, 'config.json')}:"),
          json.dumps(result["medusa_choices"]))
    return result


if __name__ == "__main__":
    main()
