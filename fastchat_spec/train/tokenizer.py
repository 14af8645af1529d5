"""A small Llama-style SentencePiece tokenizer trained on FastChat JSON conversations.

References:
- SentencePiece (Kudo & Richardson, 2018), BPE trainer options as in Llama's
  tokenizer (Touvron et al., 2023): byte fallback, digits split, identity
  normalisation, whitespace kept as is, ``<unk>``=0, ``<s>``=1, ``</s>``=2, no pad.
- ``transformers.LlamaTokenizer`` (the slow, sentencepiece-backed class) saves
  and loads the folder, so ``AutoTokenizer.from_pretrained(DIR, use_fast=False)``
  works as FastChat's Vicuna adapter calls it.
- ``fastchat.train.train.preprocess``: its label masking counts tokens per turn
  with ``len(tokenizer(part).input_ids) - 2`` and corrects by one when
  ``tokenizer.legacy`` is False. We save ``legacy=True``: each text span after a
  special token (``</s>USER: ...``) then gets SentencePiece's dummy-prefix space
  exactly as when the span is tokenised alone, so FastChat's counts match with no
  "tokenization mismatch" (``tests/test_tokenizer.py`` checks this on ShareGPT).
  Keeping whitespace unnormalised matters too: the template's trailing
  "ASSISTANT: " must end in a lone "▁" token for the ``- 2``.
"""
import argparse
import io
import os
import tempfile
from typing import Iterable, Iterator, List, Optional

DEFAULT_VOCAB_SIZE = 8000
DEFAULT_MODEL_MAX_LENGTH = 2048
# 8k pieces cannot also hold thousands of rare CJK characters: characters
# outside this coverage fall back to UTF-8 byte tokens instead.
DEFAULT_CHARACTER_COVERAGE = 0.9995
# SentencePiece skips longer lines; Llama used the same bound.
MAX_SENTENCE_BYTES = 4192


def conversation_texts(convs: Iterable[dict]) -> Iterator[str]:
    """Conversations rendered as the model sees them: the vicuna_v1.1 prompt, separators as newlines.

    Training on the rendered text lets BPE learn the template's "USER", "ASSISTANT"
    and system-prompt words as pieces; "</s>" is left out since it is a special token.
    """
    from fastchat.conversation import get_conv_template

    for conv in convs:
        template = get_conv_template("vicuna_v1.1")
        for i, turn in enumerate(conv["conversations"]):
            template.append_message(template.roles[i % 2], turn["value"])
        yield template.get_prompt().replace(template.sep2, "\n")


def _lines_of(texts: Iterable[str]) -> Iterator[str]:
    """Non-empty lines: SentencePiece trains on lines, as Llama's tokenizer did (newlines become byte tokens)."""
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def train_sentencepiece(
    lines: Iterable[str],
    vocab_size: int,
    max_sentences: Optional[int] = None,
    character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
) -> bytes:
    """Serialized SentencePiece BPE model trained with Llama's options."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_surface=" \u2047 ",
        max_sentence_length=MAX_SENTENCE_BYTES,
        input_sentence_size=max_sentences or 0,
        shuffle_input_sentence=True,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return model.getvalue()


def save_llama_tokenizer(sp_model: bytes, out_dir: str, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH):
    """Write tokenizer.model, tokenizer_config.json and special_tokens_map.json; return the tokenizer.

    pad is set to ``<unk>``, the convention of FastChat's trainer, so batching
    works without an extra token.
    """
    from transformers import LlamaTokenizer

    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "tokenizer.model")
        with open(vocab_file, "wb") as f:
            f.write(sp_model)
        tokenizer = LlamaTokenizer(
            vocab_file=vocab_file,
            legacy=True,
            add_bos_token=True,
            add_eos_token=False,
            pad_token="<unk>",
            model_max_length=model_max_length,
            padding_side="right",
            clean_up_tokenization_spaces=False,
        )
        tokenizer.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def load_tokenizer(path: str):
    """Our saved tokenizer, loaded as FastChat loads Vicuna's (AutoTokenizer, slow)."""
    from transformers import AutoTokenizer

    if not os.path.exists(os.path.join(path, "tokenizer.model")):
        raise FileNotFoundError(
            f"{path}/tokenizer.model not found: train one with "
            "`python -m fastchat_spec.train.tokenizer --data data/sharegpt/train.json --out DIR`"
        )
    return AutoTokenizer.from_pretrained(path, use_fast=False)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str,
    max_sentences: Optional[int] = None,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
):
    """Train on ``texts`` (split into lines) and save a Llama tokenizer folder; return the tokenizer."""
    sp_model = train_sentencepiece(_lines_of(texts), vocab_size, max_sentences, character_coverage)
    return save_llama_tokenizer(sp_model, out_dir, model_max_length)


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastchat_spec.train.tokenizer",
        description=(
            "Train a Llama-style SentencePiece BPE tokenizer (byte fallback, split digits) on the "
            "turns of a FastChat JSON file and save it as a LlamaTokenizer folder "
            "(tokenizer.model, tokenizer_config.json, special_tokens_map.json)."
        ),
        epilog="Example: python -m fastchat_spec.train.tokenizer --data data/sharegpt/train.json "
        "--vocab-size 8000 --out data/tokenizer-8k",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="FastChat JSON to train on; write it with `python -m fastchat_spec.train.data` "
        "(use train.json, never heldout.json)",
    )
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument(
        "--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help=f"pieces incl. 256 byte tokens (default {DEFAULT_VOCAB_SIZE})"
    )
    parser.add_argument(
        "--max-sentences",
        type=int,
        default=None,
        help="train on a random sample of this many lines (default: all lines; 300000 is plenty "
        "for 8k pieces and much faster)",
    )
    parser.add_argument(
        "--model-max-length",
        type=int,
        default=DEFAULT_MODEL_MAX_LENGTH,
        help=f"model_max_length saved in tokenizer_config.json (default {DEFAULT_MODEL_MAX_LENGTH})",
    )
    parser.add_argument(
        "--character-coverage",
        type=float,
        default=DEFAULT_CHARACTER_COVERAGE,
        help=f"share of characters given their own piece; the rest use byte tokens (default {DEFAULT_CHARACTER_COVERAGE})",
    )
    args = parser.parse_args(argv)
    if args.vocab_size < 300:
        parser.error(f"--vocab-size {args.vocab_size} is too small: 259 ids are bytes and specials; use 1000 or more")
    return args


def main(argv: Optional[List[str]] = None):
    """Command line entry point; returns the saved tokenizer."""
    from fastchat_spec.train.data import read_fastchat_json

    args = _parse_args(argv)
    convs = read_fastchat_json(args.data)
    print(f"training a {args.vocab_size}-piece BPE tokenizer on {len(convs):,} conversations from {args.data}")
    sp_model = train_sentencepiece(
        _lines_of(conversation_texts(convs)), args.vocab_size, args.max_sentences, args.character_coverage
    )
    tokenizer = save_llama_tokenizer(sp_model, args.out, args.model_max_length)
    sample = convs[0]["conversations"][0]["value"][:200] if convs else "Hello world"
    n_tokens = len(tokenizer(sample, add_special_tokens=False).input_ids)
    print(f"saved {args.out} ({len(tokenizer)} tokens); a {len(sample)}-character sample takes {n_tokens} tokens")
    return tokenizer


if __name__ == "__main__":
    main()
