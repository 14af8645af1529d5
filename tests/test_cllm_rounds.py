"""CLLM rounds: domain selection, on-policy rounds with a summary per round, and the result served by FastChat."""
from __future__ import annotations

import json
import os

import pytest
from fastchat.model.model_adapter import get_generate_stream_function, load_model

from fastchat_spec.spec_model import SpecModel
from fastchat_spec.train import cllm_eval, cllm_rounds, domain
from tests.tiny import CONTEXT, greedy

pytestmark = pytest.mark.usefixtures("one_thread")


def conv(cid: str, prompt: str, answer: str = "Sure, here it is.") -> dict:
    return {"id": cid, "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}


CODE = [
    conv("fence", "Fix this please", "```python\nprint('hi')\n```"),
    conv("lines", "why does it fail?", "int main() {\n  int x = 1;\n  return x;\n}"),
    conv("ask", "Write a python function that sorts a list of words."),
    conv("trace", "Traceback (most recent call last):\n  File \"a.py\", line 3\nimport numpy\nfrom x import y\n"
                  "return value"),
]
MATH = [
    conv("sum", "What is 12 + 30 and 7 * 6?"),
    conv("word", "Solve the equation 2x = 10 for x."),
    conv("story", "Anna has 3 apples and buys 5 more. How many apples does she have?"),
    conv("table", "1+2=3, 4*5=20, 9/3=3; 10-4 = 6"),
]
GENERAL = [
    conv("poem", "Write a poem about the river and the stone tree."),
    conv("hello", "Hello world, how are you today?"),
    conv("date", "The meeting was moved from 2023-01-05 to the next week, with 12 people."),
    conv("snake", "Tell me about the python snake that lives under the house."),
]


@pytest.mark.parametrize("name,convs", [("code", CODE), ("math", MATH)])
def test_domain_rules_pick_their_conversations(name, convs):
    others = [c for group in (CODE, MATH, GENERAL) if group is not convs for c in group]
    assert domain.select(convs, name) == convs
    assert [c["id"] for c in domain.select(others, name)] == []
    assert domain.select(convs + GENERAL, "all") == convs + GENERAL
    with pytest.raises(ValueError, match="use one of all, code, math"):
        domain.select(convs, "poetry")


def test_domain_subsets_command(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text(json.dumps(CODE + MATH + GENERAL))
    (data / "heldout.json").write_text(json.dumps(GENERAL + CODE[:2]))
    counts = domain.main(["--data_dir", str(data), "--out_dir", str(tmp_path / "out"), "--domains", "code,all"])
    assert counts == {"train_code": 4, "train_all": 12, "heldout_code": 2, "heldout_all": 6}
    counts = domain.main(["--data_dir", str(data), "--out_dir", str(tmp_path / "out"), "--domains", "code"])
    assert counts == {"train_code": 4, "heldout_code": 2, "heldout_all": 6}  # held-out: always the general set too
    written = json.loads((tmp_path / "out" / "heldout_code.json").read_text())
    assert [c["id"] for c in written] == ["fence", "lines"]


@pytest.fixture(scope="module")
def rounds(base_dir, tmp_path_factory):
    """Two tiny rounds on the tiny base: 3 code prompts each, 2 training steps."""
    tmp = tmp_path_factory.mktemp("cllm_rounds")
    train = [conv(f"{c['id']}-{k}", c["conversations"][0]["value"] + f" ({k})", c["conversations"][1]["value"])
             for k in range(2) for c in CODE + GENERAL]
    (tmp / "train.json").write_text(json.dumps(train))
    (tmp / "heldout.json").write_text(json.dumps(CODE + GENERAL + MATH))
    out = tmp / "run"
    summary = cllm_rounds.main([
        "--model", base_dir, "--train_data", str(tmp / "train.json"), "--heldout_data", str(tmp / "heldout.json"),
        "--output_dir", str(out), "--domain", "code", "--rounds", "2", "--prompts_per_round", "3",
        "--window", "4", "--max_new_seq_len", "8", "--max_steps", "2", "--batch_size", "2",
        "--eval_prompts", "3", "--eval_tokens", "8", "--device", "cpu", "--learning_rate", "1e-3",
        "--logging_steps", "1"])
    return str(out), summary


def test_rounds_write_a_summary_with_speed_and_perplexity_per_round(rounds):
    out, summary = rounds
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == summary
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    for entry in summary["rounds"]:
        for key in ("domain_tokens_per_step", "general_tokens_per_step"):
            assert entry[key] >= 1.0, (key, entry)
        assert entry["measured"]["code"]["prompts"] == 3 and entry["measured"]["all"]["prompts"] == 3
        assert entry["perplexity"] > 1.0 and set(entry["targets_met"]) == {
            "domain >= 1.6", "general >= 1.3", "perplexity within 10%"}
    assert summary["rounds"][0]["served_as"] == "plain" and summary["rounds"][0]["perplexity_change"] == 0.0
    for entry in summary["rounds"][1:]:
        assert entry["served_as"] == "cllm"  # each round's checkpoint was loaded through the CLLM adapter
        assert entry["trajectories"]["prompts"] == 3 and entry["train"]["records"] > 0
        assert {"collect", "train", "measure"} <= set(entry["seconds"])


def test_each_round_starts_from_the_last_and_takes_fresh_prompts(rounds):
    out, summary = rounds
    first, second = (summary["rounds"][r]["model"] for r in (1, 2))
    with open(os.path.join(second, "config.json")) as f:
        assert json.load(f)["cllm"]["base_model_name_or_path"] == first  # on-policy: round 2 trained round 1's model
    prompts = []
    for r in (1, 2):
        with open(os.path.join(out, f"round{r}", "prompts.json")) as f:
            prompts.append({c["id"] for c in json.load(f)})
    assert prompts[0].isdisjoint(prompts[1])
    assert all(i.split("-")[0] in {c["id"] for c in CODE} for ids in prompts for i in ids)


def test_last_checkpoint_serves_through_fastchat_and_measures_as_the_stream_counts(rounds):
    _, summary = rounds
    path = summary["rounds"][-1]["model"]
    model, tok = load_model(path, device="cpu")
    assert isinstance(model, SpecModel) and model.spec.method == "cllm" and model.spec.num_heads == 4
    prompt = "Write a python function that adds two numbers."
    last = list(get_generate_stream_function(model, path)(model, tok, greedy(prompt, 12), "cpu", CONTEXT))[-1]
    assert last["usage"]["completion_tokens"] > 0
    served = cllm_eval.jacobi_speed(model, tok, [prompt], None, 12, lookup=None)  # as served: with the context branch
    window_alone = cllm_eval.jacobi_speed(model, tok, [prompt], None, 12)  # what consistency training is judged by
    assert served["window"] == window_alone["window"] == 4 and served["prompts"] == 1
    assert served["steps"] <= window_alone["steps"]
    if last["finish_reason"] == "length":  # the same steps the served stream reports (its prefill left out)
        assert served["steps"] == last["spec"]["steps"] - 1


def test_rounds_help_and_bad_inputs(capsys, tmp_path, base_dir):
    with pytest.raises(SystemExit):
        cllm_rounds.main(["--help"])
    assert "--prompts_per_round" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cllm_rounds.main(["--model", base_dir, "--train_data", str(tmp_path / "none.json"),
                          "--heldout_data", str(tmp_path / "none.json"), "--output_dir", str(tmp_path)])
    assert "fastchat_spec.train.data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cllm_rounds.main(["--model", base_dir, "--train_data", base_dir + "/config.json", "--heldout_data",
                          base_dir + "/config.json", "--output_dir", str(tmp_path), "--prompts_per_rond", "4"])
    assert "unknown flags --prompts_per_rond 4" in capsys.readouterr().err


def test_collector_keeps_one_domain_and_skips_used_prompts(base_dir, tmp_path):
    from fastchat_spec.train import cllm_data

    data = tmp_path / "convs.json"
    data.write_text(json.dumps(GENERAL + CODE + MATH))
    out = tmp_path / "trajectories.json"
    summary = cllm_data.main(["--model", base_dir, "--data_path", str(data), "--output", str(out), "--domain", "code",
                              "--skip_prompts", "1", "--max_prompts", "2", "--max_new_tokens", "4",
                              "--max_new_seq_len", "4", "--device", "cpu"])
    assert summary["prompts"] == 2
    assert {r["data_id"] for r in json.loads(out.read_text())} == {"lines", "ask"}
