"""The base-model trainer: a tiny Llama learns on CPU and its folder loads in FastChat."""
import json
import os

import pytest
import torch

from fastchat_spec.train import base, data, dataset, split_long
from fastchat_spec.train.tokenizer import conversation_texts, train_tokenizer


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tokenizer (1000 pieces), 50 training and 10 held-out conversations."""
    root = tmp_path_factory.mktemp("base")
    train, heldout = data.split_train_heldout(data.load_sharegpt(limit=1500))
    train = split_long.split_all(train, 256)
    train_tokenizer(conversation_texts(train[:300]), vocab_size=1000, out_dir=str(root / "tokenizer"))
    data.write_fastchat_json(train[:50], str(root / "train.json"))
    data.write_fastchat_json(split_long.split_all(heldout, 256)[:10], str(root / "heldout.json"))
    return root


@pytest.fixture(scope="module")
def trained(workdir):
    out = workdir / "vicuna-tiny"
    result = base.main([
        "--size", "tiny",
        "--tokenizer", str(workdir / "tokenizer"),
        "--data_path", str(workdir / "train.json"),
        "--eval_data_path", str(workdir / "heldout.json"),
        "--output_dir", str(out),
        "--model_max_length", "128",
        "--per_device_train_batch_size", "4",
        "--max_steps", "24",
        "--learning_rate", "1e-2",
        "--warmup_ratio", "0",
        "--logging_steps", "1",
        "--dataloader_num_workers", "0",
        "--preprocessing_num_workers", "1",
        "--disable_tqdm", "True",
    ])
    return out, result


def test_loss_decreases(trained):
    _, result = trained
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5
    assert result.eval_loss is not None and result.eval_loss < losses[0]
    assert result.tokens_per_second > 0


def test_output_folder_is_complete(trained):
    out, _ = trained
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= files
    config = json.load(open(out / "config.json"))
    assert config["fastchat_conv_template"] == "vicuna_v1.1"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    assert config["max_position_embeddings"] == 2048 and config["tie_word_embeddings"] is False
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_fastchat_loads_it_with_the_vicuna_template(trained):
    from fastchat.model import get_conversation_template
    from fastchat.model.model_adapter import load_model

    out, _ = trained
    model, tokenizer = load_model(str(out), device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert get_conversation_template(str(out)).name == "vicuna_v1.1"
    ids = tokenizer("USER: hi ASSISTANT:", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()


def test_nano_fits_the_package_and_small_is_about_100m():
    assert base.parameter_count("nano", vocab_size=8000) * 2 < 15e6  # bytes in fp16
    assert 95e6 < base.parameter_count("small", vocab_size=8000) < 115e6


def test_build_base_model_matches_tokenizer(workdir):
    from fastchat_spec.train.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(workdir / "tokenizer"))
    model = base.build_base_model("tiny", tokenizer)
    assert model.config.vocab_size == len(tokenizer) == 1000
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config.fastchat_conv_template == "vicuna_v1.1"


def test_collator_pads_to_longest():
    collate = dataset.Collator(pad_token_id=0, multiple=8, attention_mask=False)  # the base trainer's
    batch = collate([
        {"input_ids": torch.tensor([1, 5, 6]), "labels": torch.tensor([-100, 5, 6])},
        {"input_ids": torch.tensor([1, 7, 8, 9, 10, 11, 12, 13, 14]), "labels": torch.tensor([-100] * 9)},
    ])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][0, 3:].eq(0).all() and batch["labels"][0, 3:].eq(-100).all()
    assert "attention_mask" not in batch


def test_base_trainer_keeps_the_head_trainers_rows_that_have_answers(workdir):
    """One tokenization pipeline for every trainer: the base trainer's examples are the head trainers',
    without the conversations that have nothing to learn, each counted by its cause."""
    from fastchat_spec.train.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(workdir / "tokenizer"))
    convs = data.read_fastchat_json(str(workdir / "train.json"))[:12] + [
        {"id": "unk", "conversations": [{"from": "human", "value": "say <unk> please"},
                                        {"from": "gpt", "value": "<unk> it is"}]},  # FastChat's mismatch
        {"id": "long", "conversations": [{"from": "human", "value": "word " * 400}, {"from": "gpt", "value": "ok"}]},
    ]
    heads = dataset.supervised_dataset(tokenizer, convs, 128, workers=1)
    rows, stats = dataset.trainable_rows(dataset.tokenize_conversations(convs, tokenizer, workers=1), 128)
    with_answers = [i for i in range(len(heads)) if (heads[i]["labels"] != dataset.IGNORE_TOKEN_ID).any()]
    assert len(heads) == len(convs) and stats.kept == len(rows) == len(with_answers) >= 10
    assert with_answers[-1] < len(convs) - 2 and stats.mismatched >= 1 and stats.no_reply_in_window >= 1
    kept = dataset.TokenizedConversations(rows)
    for row, i in enumerate(with_answers):
        ids, labels = heads[i]["input_ids"], heads[i]["labels"]
        assert torch.equal(kept[row]["input_ids"], ids) and torch.equal(kept[row]["labels"], labels)
        answer = labels != dataset.IGNORE_TOKEN_ID
        assert torch.equal(labels[answer], ids[answer]) and not answer[0]  # labels are the answer tokens


def test_size_defaults_yield_to_user_flags():
    flags = base.default_flags("nano", ["--learning_rate", "5e-4"], cuda_bf16=True)
    assert flags[flags.index("--learning_rate") + 1] == "2e-3"  # prepended: the user's flag comes later and wins
    assert "--bf16" in flags
    assert "--bf16" not in base.default_flags("nano", ["--fp16"], cuda_bf16=True)


def test_missing_tokenizer_error_names_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        base.main(["--data_path", "x.json", "--output_dir", str(tmp_path)])
    assert "fastchat_spec.train.tokenizer" in capsys.readouterr().err
