"""ShareGPT salvage, role normalisation, held-out split and long-conversation splitting."""
import json
import random

import pytest

from fastchat_spec.train import data, split_long

SALVAGEABLE_IN_0_1_0 = 17_671


@pytest.fixture(scope="module")
def salvaged():
    """(records, report) of the packaged file: parsed once, about a second."""
    return data.salvage_records(data.sharegpt_text())


@pytest.fixture(scope="module")
def convs(salvaged):
    return data.normalise_all(salvaged[0])[0]


def _turns(*pairs):
    return [{"from": role, "value": value} for role, value in pairs]


def _roles(conv):
    return [t["from"] for t in conv["conversations"]]


# ---------------------------------------------------------------- salvage


def test_salvage_keeps_every_complete_record(salvaged):
    records, report = salvaged
    assert report.kept == len(records) == SALVAGEABLE_IN_0_1_0
    assert report.truncated and report.tail_chars > 0
    assert all("conversations" in r and "id" in r for r in records)


def test_salvage_of_a_cut_array():
    text = '[{"id": "a", "conversations": []},\n  {"id": "b", "conversations": []}, {"id": "c", "conv'
    records, report = data.salvage_records(text)
    assert [r["id"] for r in records] == ["a", "b"]
    assert report.truncated and report.tail_chars == len('{"id": "c", "conv')


def test_salvage_of_a_complete_array():
    records, report = data.salvage_records('[{"id": "a"}, {"id": "b"}]')
    assert len(records) == 2 and not report.truncated


# ---------------------------------------------------------------- roles


def test_roles_mapped_and_system_dropped():
    record = {
        "id": "x_0",
        "conversations": _turns(("system", "shared from somewhere"), ("user", "hi"), ("chatgpt", "hello"),
                                ("human", "more"), ("bard", "sure")),
    }
    conv = data.normalise_conversation(record)
    assert _roles(conv) == ["human", "gpt", "human", "gpt"]
    assert conv["conversations"][1]["value"] == "hello"


def test_leading_gpt_and_trailing_human_dropped():
    record = {"id": "x_1", "conversations": _turns(("gpt", "cut"), ("human", "q"), ("gpt", "a"), ("human", "open"))}
    conv = data.normalise_conversation(record)
    assert [t["value"] for t in conv["conversations"]] == ["q", "a"]


def test_same_role_turns_merged_and_repeats_dropped():
    record = {
        "id": "x_2",
        "conversations": _turns(("human", "666"), ("human", "666"), ("human", "why?"), ("gpt", " a "), ("gpt", "b")),
    }
    conv = data.normalise_conversation(record)
    assert conv["conversations"] == _turns(("human", "666\n\nwhy?"), ("gpt", "a\n\nb"))


def test_empty_turns_dropped_then_too_short_is_none():
    assert data.normalise_conversation({"id": "e", "conversations": _turns(("human", "  "), ("gpt", "x"))}) is None
    assert data.normalise_conversation({"id": "e", "conversations": []}) is None


def test_unknown_role_and_template_breakers_drop_the_conversation():
    assert data.normalise_conversation({"id": "u", "conversations": _turns(("human", "q"), ("robot", "a"))}) is None
    assert data.normalise_conversation({"id": "t", "conversations": _turns(("human", "q"), ("gpt", "a</s>b"))}) is None


def test_all_normalised_conversations_alternate(convs, salvaged):
    assert 0.95 * len(salvaged[0]) < len(convs) <= len(salvaged[0])
    for conv in convs:
        roles = _roles(conv)
        assert len(roles) % 2 == 0 and roles == ["human", "gpt"] * (len(roles) // 2)
        assert all(t["value"] and t["value"] == t["value"].strip() for t in conv["conversations"])
    assert len({c["id"] for c in convs}) == len(convs)


# ---------------------------------------------------------------- held-out split


def test_heldout_disjoint_from_train(convs):
    train, heldout = data.split_train_heldout(convs)
    assert 0.01 * len(convs) < len(heldout) < 0.03 * len(convs)
    assert not {c["id"] for c in train} & {c["id"] for c in heldout}
    groups = {data.conversation_group(c["id"]) for c in heldout}
    assert not groups & {data.conversation_group(c["id"]) for c in train}
    protected = data.protected_prompts(heldout)
    train_prompts = {t["value"] for c in train for t in c["conversations"] if t["from"] == "human"}
    assert protected and not protected & train_prompts
    assert not protected & {c["conversations"][0]["value"] for c in train}


def test_heldout_split_is_deterministic(convs):
    _, heldout = data.split_train_heldout(convs)
    shuffled = list(convs)
    random.Random(0).shuffle(shuffled)
    _, again = data.split_train_heldout(shuffled)
    assert {c["id"] for c in again} == {c["id"] for c in heldout}
    assert data.is_heldout("QWJhYvA_0") == data.is_heldout("QWJhYvA_7")  # one original conversation


def test_heldout_first_turns_are_heldout_prompts(convs):
    prompts = data.heldout_first_turns(5)
    _, heldout = data.split_train_heldout(convs)
    assert len(prompts) == len(set(prompts)) == 5
    assert set(prompts) <= {c["conversations"][0]["value"] for c in heldout}


# ---------------------------------------------------------------- long conversations


def _word_count(text):
    return len(text.split())


def _rounds_cost(piece, count):
    return sum(count(t["value"]) + split_long.TURN_OVERHEAD_TOKENS for t in piece["conversations"])


def test_split_respects_the_limit():
    words = lambda n: " ".join(["w"] * n)  # noqa: E731
    conv = {"id": "L_0", "conversations": _turns(*[(r, words(30)) for _ in range(10) for r in ("human", "gpt")])}
    pieces = split_long.split_long_conversation(conv, max_length=200, count_tokens=_word_count, prefix_tokens=20)
    assert len(pieces) == 5  # each round costs 72; two fit in 180
    assert [p["id"] for p in pieces] == [f"L_0_{i}" for i in range(0, 20, 4)]
    for piece in pieces:
        assert _roles(piece)[0] == "human" and len(piece["conversations"]) % 2 == 0
        assert _rounds_cost(piece, _word_count) <= 180
    assert sum(len(p["conversations"]) for p in pieces) == 20


def test_split_keeps_short_conversations_whole():
    conv = {"id": "S_0", "conversations": _turns(("human", "a b"), ("gpt", "c d"))}
    assert split_long.split_long_conversation(conv, 100, _word_count) == [conv]


def test_split_oversized_round_alone_or_dropped():
    words = lambda n: " ".join(["w"] * n)  # noqa: E731
    conv = {
        "id": "O_0",
        "conversations": _turns(("human", words(5)), ("gpt", words(5)), ("human", words(10)), ("gpt", words(500)),
                                ("human", words(400)), ("gpt", words(5)), ("human", words(5)), ("gpt", words(5))),
    }
    pieces = split_long.split_long_conversation(conv, 100, _word_count)
    assert [len(p["conversations"]) for p in pieces] == [2, 2, 2]
    assert pieces[1]["conversations"][1]["value"] == words(500)  # kept alone, truncated in training
    assert all(len(t["value"].split()) != 400 for p in pieces for t in p["conversations"])  # prompt too long


def test_split_on_sharegpt_with_the_estimate(convs):
    sample = convs[:2000]
    pieces = split_long.split_all(sample, 512)
    prefix = split_long.estimate_tokens(split_long.vicuna_system_prompt()) + 1
    for piece in pieces:
        assert _roles(piece)[0] == "human"
        if len(piece["conversations"]) > 2:  # only single oversized rounds may exceed
            assert _rounds_cost(piece, split_long.estimate_tokens) + prefix <= 512
    assert len(pieces) > len(sample)


# ---------------------------------------------------------------- command line


def test_command_writes_fastchat_json(tmp_path, capsys):
    counts = data.main(["--out-dir", str(tmp_path), "--limit", "300", "--model-max-length", "512"])
    out = capsys.readouterr().out
    assert f"salvaged {SALVAGEABLE_IN_0_1_0:,}" in out and "truncated" in out
    train = json.loads((tmp_path / "train.json").read_text(encoding="utf-8"))
    heldout = json.loads((tmp_path / "heldout.json").read_text(encoding="utf-8"))
    assert len(train) == counts["train_pieces"] and len(heldout) == counts["heldout_pieces"]
    assert counts["normalised"] == 300
    for conv in train + heldout:
        assert set(conv) == {"id", "conversations"}
        assert _roles(conv) == ["human", "gpt"] * (len(conv["conversations"]) // 2)
    assert data.read_fastchat_json(str(tmp_path / "train.json")) == train


def test_missing_json_error_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="fastchat_spec.train.data"):
        data.read_fastchat_json(str(tmp_path / "nope.json"))
    other = tmp_path / "other.json"
    other.write_text('{"model": "x"}', encoding="utf-8")
    with pytest.raises(ValueError, match="not FastChat JSON"):
        data.read_fastchat_json(str(other))
