"""CLLM: Jacobi decoding through the shared engine, the adapter, trajectories and consistency training."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import requests
import torch
from fastchat.conversation import get_conv_template
from fastchat.model.model_adapter import (get_conversation_template, get_generate_stream_function,
                                          get_model_adapter, load_model)
from fastchat.serve.inference import generate_stream as fastchat_generate_stream

from fastchat_spec.adapters.cllm import CllmAdapter, CllmConversation, write_cllm_checkpoint
from fastchat_spec.spec_model import SpecModel
from fastchat_spec.train import cllm, cllm_data
from tests.tiny import CONTEXT, MAX_NEW, PROMPTS, greedy

pytestmark = pytest.mark.usefixtures("one_thread")

CONVERSATIONS = [
    {"id": "c1", "conversations": [{"from": "human", "value": "The cat runs over the house."},
                                   {"from": "gpt", "value": "The dog jumps into the water."}]},
    {"id": "c2", "conversations": [{"from": "human", "value": "Why is the river fast? Explain it."},
                                   {"from": "gpt", "value": "Because the water runs quickly."}]},
    {"id": "c3", "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi!"}]},
]
WINDOW = 4


@pytest.fixture(scope="module")
def named_dir(models_dir, base_dir):
    """The tiny base, unchanged, in a folder whose name marks it as a CLLM."""
    out = os.path.join(models_dir, "cllm-vicuna-tiny")
    if not os.path.isdir(out):
        shutil.copytree(base_dir, out)
    return out


@pytest.fixture(scope="module")
def flagged_dir(models_dir, base_dir, base_model):
    """The tiny base with the config flag our trainer writes, in a folder with no 'cllm' in its name."""
    from transformers import AutoTokenizer

    out = os.path.join(models_dir, "flagged-tiny")
    if not os.path.isdir(out):
        write_cllm_checkpoint(out, base_model, AutoTokenizer.from_pretrained(base_dir, use_fast=False), WINDOW)
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cllm_data") / "convs.json"
    path.write_text(json.dumps(CONVERSATIONS))
    return str(path)


@pytest.fixture(scope="module")
def trajectories(base_dir, data_file):
    out = os.path.join(os.path.dirname(data_file), "trajectories.json")
    summary = cllm_data.main(["--model", base_dir, "--data_path", data_file, "--output", out,
                              "--max_new_tokens", str(WINDOW), "--max_new_seq_len", "12", "--use_labels",
                              "--batch_size", "2", "--device", "cpu"])
    with open(out) as f:
        return out, json.load(f), summary


# --------------------------------------------------------------------------- decoding (greedy text: test_exactness.py)
def test_window_comes_from_the_config_else_16(named_dir, flagged_dir):
    for path, window in ((named_dir, 16), (flagged_dir, WINDOW)):
        model, _ = load_model(path, device="cpu")
        assert isinstance(model, SpecModel) and model.drafter is None and model.spec.method == "cllm"
        assert model.spec.num_heads == window, path


def test_bad_window_in_the_config_names_the_file():
    with pytest.raises(ValueError, match=r"ckpt/config.json: cllm.n_token_seq_length is 0; use a Jacobi window"):
        CllmAdapter().spec_config({"cllm": {"n_token_seq_length": 0}}, "ckpt")


def test_bad_window_is_refused_with_the_fix(named_dir):
    model, tok = load_model(named_dir, device="cpu")
    stream = get_generate_stream_function(model, named_dir)
    with pytest.raises(ValueError, match="n_token_seq_length"):
        list(stream(model, tok, greedy("Hello", n_token_seq_length=0), "cpu", CONTEXT))


def test_sampling_runs_to_length(named_dir):
    model, tok = load_model(named_dir, device="cpu")
    stream = get_generate_stream_function(model, named_dir)
    torch.manual_seed(0)
    params = {"prompt": "Hello", "temperature": 0.8, "top_p": 0.9, "max_new_tokens": 24, "echo": False,
              "n_token_seq_length": 5, "stop_token_ids": []}
    last = list(stream(model, tok, params, "cpu", CONTEXT))[-1]
    assert last["finish_reason"] in ("length", "stop")
    assert last["spec"]["steps"] == len(last["spec"]["accepted"]) + 1


def test_worker_streams_growing_text_with_usage(named_dir, stock_texts, subprocess_env, tmp_path):
    from tests.servers import FastChatServers

    prompt = PROMPTS[0]
    with FastChatServers(named_dir, subprocess_env, str(tmp_path), api=False) as servers:
        # The worker registers with the controller before its HTTP server listens.
        worker = servers.processes[-1]
        worker.wait_until(lambda: requests.post(servers.worker_url + "/worker_get_status", timeout=2).ok,
                          "answering /worker_get_status")
        chunks = servers.worker_stream(greedy(prompt, n_token_seq_length=WINDOW))
    texts = [c["text"] for c in chunks]
    assert all(c["error_code"] == 0 for c in chunks), chunks[-1]
    assert len(chunks) >= 3 and len({t for t in texts if t}) >= 2, texts
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])), texts
    assert texts[-1] == stock_texts[prompt]
    usage = chunks[-1]["usage"]
    tok = load_model(named_dir, device="cpu")[1]
    assert usage["prompt_tokens"] == len(tok(prompt).input_ids)
    assert chunks[-1]["finish_reason"] in ("length", "stop")
    if chunks[-1]["finish_reason"] == "length":
        assert usage["completion_tokens"] == MAX_NEW
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if "spec" in chunks[-1]:  # forwarded by the hook's worker patch
        assert chunks[-1]["spec"]["tokens"] >= usage["completion_tokens"]


def test_guesses_copied_from_the_context_keep_fastchats_text_in_fewer_steps(named_dir, stock_texts):
    """Beside the Jacobi window, a branch copies what followed the last earlier occurrence of the context's end
    (lookahead decoding's n-gram guesses). Verification keeps FastChat's text; an answer that repeats itself, as
    the tiny base's do, takes fewer steps with it than with the window alone."""
    model, tok = load_model(named_dir, device="cpu")
    stream = get_generate_stream_function(model, named_dir)
    steps = {}
    for lookup in (0, None):
        steps[lookup] = 0
        for prompt in PROMPTS[:4]:
            options = {} if lookup is None else {"spec_options": {"lookup_tokens": lookup}}
            last = list(stream(model, tok, greedy(prompt, n_token_seq_length=8, **options), "cpu", CONTEXT))[-1]
            assert last["text"] == stock_texts[prompt], (lookup, prompt)
            steps[lookup] += last["spec"]["steps"]
    assert steps[None] < steps[0], steps


def test_context_ngrams_copy_after_the_longest_latest_match():
    from fastchat_spec.generate.proposers.jacobi import ContextNgrams

    ngrams = ContextNgrams(length=3)
    ngrams.extend([7, 1, 2, 9, 1, 2, 8, 4, 5, 6, 1])
    assert ngrams.continuation(2) == [8, 4, 5]  # "1 2" last came before 8 (the latest of two)
    assert ngrams.continuation(5) == [6, 1]  # only the root itself matches: what followed it, to the context's end
    assert ngrams.continuation(3) == []  # never seen: the branch is filled from the prompt
    assert ContextNgrams(length=0).continuation(2) == []


def test_the_checkpoint_sets_the_context_branch_and_a_request_overrides_it(base_model, base_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir, use_fast=False)
    off = write_cllm_checkpoint(str(tmp_path / "cllm-off"), base_model, tok, 8, {"lookup_tokens": 0})
    model, tok = load_model(off, device="cpu")
    assert model.spec.options == {"lookup_tokens": 0}
    stream = get_generate_stream_function(model, off)
    steps = {}
    for name, extra in (("checkpoint", {}), ("request", {"spec_options": {"lookup_tokens": 7}})):
        steps[name] = sum(list(stream(model, tok, greedy(p, **extra), "cpu", CONTEXT))[-1]["spec"]["steps"]
                          for p in PROMPTS[:4])
    assert steps["request"] < steps["checkpoint"], steps
    bad = write_cllm_checkpoint(str(tmp_path / "cllm-bad"), base_model, tok, 8, {"lookup_tokens": -2})
    with pytest.raises(ValueError, match=r"cllm-bad/config.json: cllm.lookup_tokens is -2"):
        load_model(bad, device="cpu")


@pytest.mark.parametrize("value", [-1, "many", 1000])
def test_a_bad_lookup_length_is_refused_by_name(named_dir, value):
    model, tok = load_model(named_dir, device="cpu")
    stream = get_generate_stream_function(model, named_dir)
    with pytest.raises(ValueError, match="lookup_tokens"):
        list(stream(model, tok, greedy(PROMPTS[0], spec_options={"lookup_tokens": value}), "cpu", CONTEXT))


# --------------------------------------------------------------------------- adapter and template
def test_adapter_matching_rules(named_dir, flagged_dir, base_dir, tmp_path):
    adapter = CllmAdapter()
    assert adapter.match(named_dir)  # "cllm" in the folder name
    assert adapter.match(flagged_dir)  # config flag
    assert adapter.match("cllm/consistency-llm-7b-sharegpt48k")  # FastChat main's rule, hub id
    assert adapter.match("vicuna-7b-cllm")  # name only (Gradio server)
    assert not adapter.match(base_dir)  # a plain model
    assert not adapter.match("vicuna-7b-v1.5")
    parent = tmp_path / "test_cllm_runs"
    shutil.copytree(base_dir, parent / "vicuna-tiny")
    assert not adapter.match(str(parent / "vicuna-tiny"))  # "cllm" in a parent folder does not count
    assert isinstance(get_model_adapter(named_dir), CllmAdapter)
    assert isinstance(get_model_adapter(flagged_dir), CllmAdapter)
    assert not isinstance(get_model_adapter(base_dir), CllmAdapter)
    plain, _ = load_model(base_dir, device="cpu")
    assert not isinstance(plain, SpecModel)


def test_templates():
    # FastChat main's cllm template: system prompt, then only the latest exchange.
    conv = get_conversation_template("cllm/consistency-llm-7b-sharegpt48k")
    assert conv.name == "cllm" and isinstance(conv, CllmConversation)
    for role, msg in (("USER", "Hi"), ("ASSISTANT", "Hello!"), ("USER", "How are you?"), ("ASSISTANT", None)):
        conv.append_message(role, msg)
    system = ("A chat between a curious user and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    assert conv.get_prompt() == system + " USER: How are you? ASSISTANT:"
    assert len(conv.messages) == 4  # rendering keeps the history
    assert isinstance(get_conv_template("cllm").copy(), CllmConversation)
    # A CLLM of a Vicuna keeps the Vicuna template.
    assert get_conversation_template("cllm-vicuna-small").name == "vicuna_v1.1"


# --------------------------------------------------------------------------- trajectories
def test_trajectory_file_format(trajectories, base_dir, data_file):
    _, records, summary = trajectories
    model, tok = load_model(base_dir, device="cpu")
    assert summary["records"] == len(records) > 0
    for conv in CONVERSATIONS:
        mine = [r for r in records if r["data_id"] == conv["id"]]
        assert [r["jacobian_itr_id"] for r in mine] == list(range(len(mine)))
        template = get_conversation_template(base_dir)
        template.append_message(template.roles[0], conv["conversations"][0]["value"])
        template.append_message(template.roles[1], None)
        prompt_ids = tok(template.get_prompt()).input_ids
        answer = []
        for r in mine:
            assert set(r) == {"data_id", "jacobian_itr_id", "prompt_ids_len", "prompt_ids",
                              "answer_trajectory_ids", "teacher_output_ids", "labels_ids"}
            assert r["prompt_ids_len"] == len(prompt_ids)
            assert r["prompt_ids"] == prompt_ids + answer
            states = r["answer_trajectory_ids"]
            assert len({len(s) for s in states}) == 1 and 1 <= len(states[0]) <= WINDOW
            assert set(states[0]) <= set(prompt_ids)  # the random start is drawn from the prompt
            assert all(a != b for a, b in zip(states, states[1:]))  # every state is a Jacobi update
            assert r["teacher_output_ids"] == r["prompt_ids"] + states[-1]
            assert r["labels_ids"][: len(prompt_ids)] == prompt_ids and r["labels_ids"][-1] == tok.eos_token_id
            answer += states[-1]
        assert len(answer) <= 12
        # The fixed points, concatenated, are the base's greedy answer.
        stock = list(fastchat_generate_stream(model, tok, greedy(template.get_prompt(), len(answer)), "cpu",
                                              CONTEXT))[-1]["text"]
        text = tok.decode(answer, skip_special_tokens=True, spaces_between_special_tokens=False,
                          clean_up_tokenization_spaces=True)
        assert text == stock


def test_collector_help_and_errors(capsys, tmp_path, base_dir):
    with pytest.raises(SystemExit):
        cllm_data.main(["--help"])
    assert "--max_new_tokens" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cllm_data.main(["--model", base_dir, "--data_path", str(tmp_path / "missing.json"),
                        "--output", str(tmp_path / "o.json")])
    assert "fastchat_spec.train.data" in capsys.readouterr().err


# --------------------------------------------------------------------------- consistency training
@pytest.mark.parametrize("ar_target", ["teacher", "labels"])
def test_consistency_steps_lower_the_consistency_loss(trajectories, base_dir, ar_target):
    from transformers import AutoModelForCausalLM

    _, records, _ = trajectories
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    objective = cllm.ConsistencyObjective(base, ar_weight=0.0)
    collate = cllm.TrajectoryCollator(pad_token_id=0, window=WINDOW, max_len=512, ar_target=ar_target)
    moving = [r for r in records if len(r["answer_trajectory_ids"]) > 1]
    batch = collate(moving[:3])
    assert batch["input_ids"].shape[0] == (2 if ar_target == "teacher" else 3) * len(moving[:3])
    optimizer = torch.optim.Adam(objective.parameters(), lr=3e-3)
    first = None
    for _ in range(5):
        loss, logs = objective(**batch)
        first = float(logs["consistency_loss"]) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, logs = objective(**batch)
    assert first > 0 and float(logs["consistency_loss"]) < 0.5 * first
    assert torch.isfinite(logs["ar_loss"])


def test_train_cli_writes_a_flagged_checkpoint_that_serves(trajectories, base_dir, tmp_path):
    path, _, _ = trajectories
    out = str(tmp_path / "cllm-vicuna-run")
    report = cllm.main(["--model_name_or_path", base_dir, "--data_path", path, "--output_dir", out,
                        "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-4",
                        "--logging_steps", "1", "--dataloader_num_workers", "0", "--disable_tqdm", "True",
                        "--save_dtype", "float32"])
    logged = [h for h in report["log_history"] if "consistency_loss" in h]
    assert logged and all("ar_loss" in h for h in logged)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["fastchat_spec_method"] == "cllm" and config["cllm"]["n_token_seq_length"] == WINDOW
    assert get_conversation_template(out).name == "vicuna_v1.1"
    model, tok = load_model(out, device="cpu")
    assert isinstance(model, SpecModel) and model.spec.num_heads == WINDOW
    last = list(get_generate_stream_function(model, out)(model, tok, greedy(PROMPTS[0], 8), "cpu", CONTEXT))[-1]
    assert last["usage"]["completion_tokens"] > 0


def test_train_cli_names_missing_inputs(tmp_path, capsys, base_dir):
    with pytest.raises(SystemExit):
        cllm.main(["--model_name_or_path", base_dir, "--output_dir", str(tmp_path / "x")])
    assert "fastchat_spec.train.cllm_data" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="cllm_data"):
        cllm.main(["--model_name_or_path", base_dir, "--data_path", str(tmp_path / "none.json"),
                   "--output_dir", str(tmp_path / "x")])
