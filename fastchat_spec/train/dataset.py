"""FastChat conversations as training tensors, tokenized and masked by FastChat's own ``preprocess``.

``fastchat.train.train.preprocess`` renders each conversation in the
vicuna_v1.1 template, tokenizes it and sets every label outside the assistant
replies to ``IGNORE_TOKEN_ID``. It pads each row to ``model_max_length``; we
cut that padding off once, keep the rows as int32 arrays and pad each batch
only to its longest row (``Collator``). ``data.py`` writes the JSON files read
here.

Every trainer uses this one pipeline. The base trainer (``base.py``) drops the
conversations with nothing to learn (``trainable_rows``); the head trainers
keep them, so that example i stays conversation i, and print a warning.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from transformers.trainer_pt_utils import LabelSmoother

IGNORE_TOKEN_ID = LabelSmoother.ignore_index  # -100, as in fastchat.train.train


@dataclass
class TokenizeStats:
    """How many tokenized conversations have something to learn, and why the others do not."""

    kept: int = 0
    mismatched: int = 0  # FastChat's masking check failed: every label masked
    no_reply_in_window: int = 0  # truncated before any assistant token

    def unusable(self, max_len: int) -> str:
        return (f"{self.mismatched} with a FastChat tokenization mismatch and "
                f"{self.no_reply_in_window} with no reply within {max_len} tokens")


# --------------------------------------------------------------------------- tokenizing
def default_workers() -> int:
    """CPU processes for tokenizing: the cores this process may use, shared among local ranks, at most 16."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(16, cores // local_ranks))


def _tokenize_chunk(job: tuple) -> list[dict]:
    """FastChat's preprocess on a few conversations; each row cut to its real length."""
    from fastchat.train.train import preprocess

    convs, tokenizer = job
    part = preprocess([c["conversations"] for c in convs], tokenizer)
    ids, labels = part["input_ids"], part["labels"]
    not_pad = ids.ne(tokenizer.pad_token_id)
    # The last non-pad position + 1, not the count of non-pad tokens: a literal "<unk>" in the
    # text is the pad id too, and counting would cut the row before its end.
    lengths = torch.where(not_pad.any(1), ids.shape[1] - not_pad.flip(1).int().argmax(1), 1)
    # numpy, not tensors: tensors sent back from a worker process each hold a shared-memory file
    # descriptor, and tens of thousands of them exhaust the process's descriptor limit
    return [{"input_ids": ids[row, :n].numpy().astype(np.int32), "labels": labels[row, :n].numpy().astype(np.int32)}
            for row, n in enumerate(lengths.tolist())]


def _tokenized_chunks(jobs: list, workers: int):
    if workers <= 1:
        yield from map(_tokenize_chunk, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: the children only run the tokenizer, never CUDA; one thread each, as OpenMP is not fork-safe
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.map(_tokenize_chunk, jobs)


def tokenize_conversations(convs: list, tokenizer, workers: int | None = None, chunk: int = 64,
                           progress: bool | None = None) -> list[dict]:
    """Every conversation through ``preprocess``: ``{"input_ids", "labels"}`` int32 rows, in worker processes
    when there are many. ``progress`` None shows a bar for four chunks or more."""
    import fastchat.train.train  # noqa: F401  imported before forking so workers inherit it
    from tqdm import tqdm

    # FastChat tokenizes whole conversations and truncates afterwards: the over-length
    # warning is expected, and each pickled copy of the tokenizer would repeat it.
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    jobs = [(convs[i:i + chunk], tokenizer) for i in range(0, len(convs), chunk)]
    show = len(jobs) >= 4 if progress is None else progress
    rows: list[dict] = []
    with tqdm(total=len(convs), desc="tokenizing", unit="conv", disable=not show) as bar:
        for part in _tokenized_chunks(jobs, min(workers or default_workers(), len(jobs))):
            rows.extend(part)
            bar.update(len(part))
    return rows


def trainable_rows(rows: list[dict], max_len: int) -> tuple[list[dict], TokenizeStats]:
    """The rows with at least one trainable label, and counts of the others by cause."""
    kept, stats = [], TokenizeStats()
    for row in rows:
        if (row["labels"] != IGNORE_TOKEN_ID).any():
            kept.append(row)
        elif len(row["input_ids"]) < max_len:
            stats.mismatched += 1
        else:
            stats.no_reply_in_window += 1
    stats.kept = len(kept)
    return kept, stats


# --------------------------------------------------------------------------- datasets
def _as_tensors(row: dict) -> dict:
    return {key: torch.from_numpy(value.astype(np.int64)) for key, value in row.items()}


class TokenizedConversations(torch.utils.data.Dataset):
    """Tokenized conversations, each stored without its padding; items are int64 tensors."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return _as_tensors(self.rows[i])

    def num_tokens(self) -> int:
        return int(sum(len(row["input_ids"]) for row in self.rows))


class LazyConversations(torch.utils.data.Dataset):
    """Conversations tokenized when first used (``--lazy_preprocess``), then kept."""

    def __init__(self, convs: list, tokenizer):
        self.convs, self.tokenizer, self.cache = convs, tokenizer, {}

    def __len__(self) -> int:
        return len(self.convs)

    def __getitem__(self, i: int) -> dict:
        if i not in self.cache:
            self.cache[i] = _as_tensors(_tokenize_chunk((self.convs[i:i + 1], self.tokenizer))[0])
        return self.cache[i]


def supervised_dataset(tokenizer, data_path, max_len: int, lazy: bool = False, workers: int | None = None):
    """FastChat JSON (a path or a list) -> dataset of {input_ids, labels}; user turns are IGNORE_TOKEN_ID."""
    from fastchat_spec.train.data import read_fastchat_json

    convs = read_fastchat_json(data_path) if isinstance(data_path, str) else list(data_path)
    tokenizer.model_max_length = max_len
    if lazy:
        return LazyConversations(convs, tokenizer)
    rows = tokenize_conversations(convs, tokenizer, workers)
    _, stats = trainable_rows(rows, max_len)
    if stats.kept < len(rows):
        print(f"warning: {len(rows) - stats.kept} of {len(rows)} conversations have no trainable tokens: "
              f"{stats.unusable(max_len)} (--model_max_length)", file=sys.stderr)
    return TokenizedConversations(rows)


def training_datasets(tokenizer, data_args):
    """(train, held-out or None) for ``arguments.DataArguments``: the eval file, else a deterministic
    split of the training file by id."""
    from fastchat_spec.train.data import is_heldout, read_fastchat_json

    convs = read_fastchat_json(data_args.data_path)
    if data_args.eval_data_path:
        heldout = read_fastchat_json(data_args.eval_data_path)
    elif data_args.heldout_fraction > 0:
        ids = [str(c.get("id", i)) for i, c in enumerate(convs)]
        flags = [is_heldout(i, data_args.heldout_fraction) for i in ids]
        if not any(flags) and len(convs) > 1:  # tiny files: hold out at least one conversation
            flags[-1] = True
        heldout = [c for c, f in zip(convs, flags) if f]
        convs = [c for c, f in zip(convs, flags) if not f]
    else:
        heldout = []
    args = (data_args.model_max_length, data_args.lazy_preprocess, data_args.preprocessing_num_workers)
    train = supervised_dataset(tokenizer, convs, *args)
    held = supervised_dataset(tokenizer, heldout, *args) if heldout else None
    return train, held


# --------------------------------------------------------------------------- batches
@dataclass
class Collator:
    """Right-pads a list of examples to the longest one (rounded up to ``multiple``).

    ``attention_mask=False`` leaves the mask out (the base trainer): with right
    padding, causal attention already keeps real tokens from seeing the pads
    behind them and pad labels are ignored, so the loss is unchanged while SDPA
    can run its fused causal kernel.
    """

    pad_token_id: int
    multiple: int = 8
    attention_mask: bool = True

    def __call__(self, examples: list[dict]) -> dict:
        n = max(len(ex["input_ids"]) for ex in examples)
        n = -(-n // self.multiple) * self.multiple
        ids = torch.full((len(examples), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), n), IGNORE_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros((len(examples), n), dtype=torch.long)
        for i, ex in enumerate(examples):
            k = len(ex["input_ids"])
            ids[i, :k], labels[i, :k], mask[i, :k] = ex["input_ids"], ex["labels"], 1
        batch = {"input_ids": ids, "labels": labels}
        if self.attention_mask:
            batch["attention_mask"] = mask
        return batch
