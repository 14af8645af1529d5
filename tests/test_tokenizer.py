"""Our SentencePiece tokenizer loads as a Llama tokenizer and suits FastChat's label masking."""
import pytest
import torch

from fastchat_spec.train import data, split_long
from fastchat_spec.train.dataset import IGNORE_TOKEN_ID as IGNORE_INDEX
from fastchat_spec.train.tokenizer import conversation_texts, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def conversations():
    """ShareGPT training pieces of at most ~1024 tokens, as the data command writes them."""
    train, _ = data.split_train_heldout(data.load_sharegpt(limit=700))
    return split_long.split_all(train, 1024)


@pytest.fixture(scope="module")
def tokenizer_dir(conversations, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(conversation_texts(conversations[:400]), vocab_size=1000, out_dir=str(out))
    return str(out)


@pytest.fixture(scope="module")
def fastchat_tokenizer(tokenizer_dir):
    """Set up as fastchat.train.train.train() sets up the Vicuna tokenizer."""
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.model_max_length = 4096
    tokenizer.padding_side = "right"
    if tokenizer.pad_token != tokenizer.unk_token:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _preprocess(conversations, tokenizer, monkeypatch):
    import fastchat.train.train as fastchat_train

    monkeypatch.setattr(fastchat_train, "local_rank", 0)  # FastChat prints warnings on rank 0 only
    return fastchat_train.preprocess([c["conversations"] for c in conversations], tokenizer)


def _supervised_spans(labels):
    """Contiguous runs of unmasked label ids."""
    spans, current = [], []
    for token in labels.tolist():
        if token != IGNORE_INDEX:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return spans


def test_files_and_special_ids(tokenizer_dir):
    import json
    import os

    assert {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"} <= set(os.listdir(tokenizer_dir))
    config = json.load(open(os.path.join(tokenizer_dir, "tokenizer_config.json")))
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["legacy"] is True
    tokenizer = load_tokenizer(tokenizer_dir)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token == tokenizer.unk_token
    assert len(tokenizer) == 1000


def test_llama_and_auto_tokenizer_load_and_round_trip(tokenizer_dir):
    from transformers import AutoTokenizer, LlamaTokenizer

    texts = [
        "Hello world, how are you today?",
        "def f(x):\n    return x ** 2  # 12345",
        "Ünïcödé, 漢字 and emoji 🙂 fall back to bytes.",
    ]
    for tokenizer in (
        LlamaTokenizer.from_pretrained(tokenizer_dir),
        AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=False),
    ):
        assert isinstance(tokenizer, LlamaTokenizer)
        for text in texts:
            ids = tokenizer(text).input_ids
            assert ids[0] == tokenizer.bos_token_id and ids[-1] != tokenizer.eos_token_id
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert tokenizer.unk_token_id not in tokenizer("漢字 🙂").input_ids  # byte fallback
        digits = tokenizer.convert_ids_to_tokens(tokenizer("12345", add_special_tokens=False).input_ids)
        assert all(len(piece.strip("▁")) <= 1 for piece in digits)  # split_digits


def test_fastchat_preprocess_has_no_tokenization_mismatch(conversations, fastchat_tokenizer, monkeypatch, capsys):
    sample = conversations[:200]
    out = _preprocess(sample, fastchat_tokenizer, monkeypatch)
    printed = capsys.readouterr().out
    assert "tokenization mismatch" not in printed
    lengths = out["attention_mask"].sum(1)
    checked = int((lengths < fastchat_tokenizer.model_max_length).sum())
    assert checked >= 190  # FastChat only checks conversations shorter than model_max_length
    assert (out["labels"] != IGNORE_INDEX).any(1).all()


def test_unmasked_labels_are_exactly_the_replies(conversations, fastchat_tokenizer, monkeypatch):
    sample = conversations[:60]
    out = _preprocess(sample, fastchat_tokenizer, monkeypatch)
    for conv, labels, mask in zip(sample, out["labels"], out["attention_mask"]):
        if mask.sum() >= fastchat_tokenizer.model_max_length:
            continue
        decoded = [fastchat_tokenizer.decode(span).lstrip(" ") for span in _supervised_spans(labels)]
        replies = [t["value"] + "</s>" for t in conv["conversations"] if t["from"] == "gpt"]
        assert decoded == replies, conv["id"]


def test_legacy_false_would_mismatch(conversations, tokenizer_dir, monkeypatch, capsys):
    """Why we save legacy=True: FastChat's non-legacy correction is off by one for our tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=False, legacy=False)
    tokenizer.model_max_length = 4096
    _preprocess(conversations[:30], tokenizer, monkeypatch)
    assert "tokenization mismatch" in capsys.readouterr().out


def test_tokens_match_fastchat_prompt(conversations, fastchat_tokenizer):
    """The conversation FastChat renders tokenises to BOS + pieces, with </s> as the EOS id."""
    text = next(conversation_texts(conversations[:1]))
    assert "USER:" in text and "ASSISTANT:" in text and "</s>" not in text
    ids = fastchat_tokenizer("Hi there</s>USER: ok").input_ids
    assert ids[0] == 1 and fastchat_tokenizer.eos_token_id in ids
    assert torch.tensor(ids).ne(fastchat_tokenizer.unk_token_id).all()
