"""Trees searched from measured joint acceptance: the counting by hand, then the command on tiny checkpoints.

The command must write a tree that the engine serves losslessly (greedy text
equal to FastChat's) under the key the method's adapter reads, and the tree it
picks is never worse, by its own measurement, than the checkpoint's current
tree or the tree grown under the independence assumption.
"""
from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch
from fastchat.model.model_adapter import get_generate_stream_function, load_model

from fastchat_spec.generate.tree import (
    Tree,
    accepted_path_frequencies,
    joint_expected_length,
    most_frequent_tree,
    replayed_tokens_per_step,
)
from fastchat_spec.methods import method
from fastchat_spec.train import tree_search
from tests import tiny

pytestmark = pytest.mark.usefixtures("one_thread")

# (r_1, r_2, r_3) per held-out position, with how many positions had it (max_rank 3).
TUPLES = Counter({(0, 0, 0): 3, (0, 1, -1): 2, (1, 0, 5): 2, (0, 0, 2): 1, (4, 0, 0): 1, (2, -1, -1): 1})


def test_path_frequencies_count_every_prefix_and_stop_at_the_first_miss():
    freq = accepted_path_frequencies(TUPLES, max_rank=3)
    assert freq == pytest.approx({(0,): 0.6, (0, 0): 0.4, (0, 0, 0): 0.3, (0, 1): 0.2, (1,): 0.2, (1, 0): 0.2,
                                  (0, 0, 2): 0.1, (2,): 0.1})


def test_the_most_frequent_paths_make_the_tree_and_its_estimate():
    freq = accepted_path_frequencies(TUPLES, max_rank=3)
    tree = most_frequent_tree(freq, 4)
    # (1,), (0, 1) and (1, 0) tie at 0.2: the shorter path first, then the smaller ranks
    assert tree.to_list() == [[0], [1], [0, 0], [0, 0, 0]]
    assert joint_expected_length(tree, freq) == pytest.approx(1 + 0.6 + 0.4 + 0.3 + 0.2)
    assert most_frequent_tree(freq, 6).to_list() == [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]]
    # a tree the data never reaches is estimated at one token per step; more nodes than paths: all of them
    assert joint_expected_length(Tree.from_paths([[3], [3, 0]]), freq) == 1.0
    assert len(most_frequent_tree(freq, 100).paths) == len(freq)


def test_keep_mode_puts_the_checkpoints_own_paths_most_often_accepted_first():
    current = Tree.from_paths([[0], [1], [2], [0, 0], [1, 0]])
    measured = {"rank_tuples": TUPLES}
    tree, _ = tree_search.choose_tree(measured, 3, "keep", max_rank=3, current=current)
    assert set(tree.paths) == set(current.paths)  # the same tree, whatever --num-nodes says
    # accepted 0.6, 0.4, 0.2, 0.2 (the shorter path first) and 0.1 of the time
    assert tree.to_ranked_list() == [[0], [0, 0], [1], [1, 0], [2]] and tree.ranked
    assert tree.within(3)[0].paths == ((0,), (0, 0))  # what a busy step verifies of it


def test_a_child_tied_with_its_parent_never_comes_first():
    freq = accepted_path_frequencies(Counter({(1, 0, 0): 1, (0,): 1}), max_rank=3)
    for n in range(1, 5):
        paths = set(most_frequent_tree(freq, n).paths)  # Tree.from_paths refuses a path without its parent
        assert len(paths) == n


def test_rank_runs_from_a_grid_of_teacher_forced_ranks():
    # depth x (batch 1, 6 positions); -1: no target at that depth (position 2: between two answers)
    grid = torch.tensor([[[0, 2, -1, 0, 11, -1]], [[1, 0, -1, 0, 0, -1]], [[0, 0, -1, -1, 0, -1]]])
    assert tree_search.rank_runs(grid, max_rank=10) == [[(0, 1, 0), (2, 0, 0)], [(0, 0), ()]]


def test_replay_steps_over_what_each_step_accepted():
    tree = Tree.from_paths([[0], [1], [0, 0]])
    runs = [[(0, 0, 1), (5,), (0,), (1, 0), (0, 0), (2,)],  # steps at 0 (3 tokens), 3 (2 tokens), 5 (1 token)
            [(0, 0), (0, 0), (0, 0)]]  # one step of 3 tokens
    assert replayed_tokens_per_step(tree, runs) == pytest.approx(9 / 4)
    # the average over all positions counts the easy second answer at every position
    freq = accepted_path_frequencies(Counter(t for run in runs for t in run), max_rank=10)
    assert joint_expected_length(tree, freq) == pytest.approx(1 + 12 / 9)


# --------------------------------------------------------------------------- the command on tiny checkpoints
def heldout_answers(path: str, stock_texts, prompts=tiny.PROMPTS[8:20]) -> str:
    """The base's own greedy answers to prompts the serving check does not use (what verification accepts)."""
    convs = [{"id": f"held_{i}", "conversations": [{"from": "human", "value": prompt},
                                                    {"from": "gpt", "value": stock_texts[prompt]}]}
             for i, prompt in enumerate(prompts)]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(convs, f)
    return path


CASES = {  # (method, tiny checkpoint, nodes); "-vicuna-" keeps FastChat's template and tokenizer choices
    "medusa": ("medusa", tiny.TinyCheckpoint("3-heads", tiny._medusa(3, noise=0.02)), 7),
    "hydra": ("hydra", tiny.TinyCheckpoint("mlp-3-heads", tiny._hydra(3, "mlp", [[0], [1], [0, 0]])), 9),
    "hydra++": ("hydra", tiny.TinyCheckpoint("prefix-mlp-3-heads", tiny._hydra(3, "prefix-mlp")), 9),
    "chimera": ("chimera", tiny.TinyCheckpoint("residual-3-heads", tiny._chimera(3, "residual")), 9),
    "chimera-published": ("chimera", tiny.TinyCheckpoint("published-3-heads", tiny._chimera(3, "published")), 9),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_searched_tree_is_written_and_served_losslessly(tmp_path, base_dir, base_model, stock_texts, case):
    name, checkpoint, nodes = CASES[case]
    entry = method(name)
    path = checkpoint.write(entry.write_checkpoint, str(tmp_path / f"{name}-vicuna-{checkpoint.name}"), base_dir,
                            base_model)
    data = heldout_answers(str(tmp_path / "heldout.json"), stock_texts)
    independent = tree_search.main(["--model-path", path, "--data_path", data, "--num-nodes", str(nodes),
                                    "--max-len", "256", "--mode", "independent", "--dry-run"])
    result = tree_search.main(["--model-path", path, "--data_path", data, "--num-nodes", str(nodes),
                               "--max-len", "256"])

    key = tree_search.TREE_KEYS[name]
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config[key] == result[key] and result["tree_key"] == key
    # as many nodes as asked, unless fewer rank paths were ever accepted (the untrained trigram heads)
    assert Tree.from_paths(config[key]).num_nodes == result["num_nodes"] + 1
    assert result["num_nodes"] == nodes or (case == "chimera-published" and 0 < result["num_nodes"] < nodes)
    assert result["positions"] > 100 and result["expected_tokens_per_step"] > 1.0
    # the N most often accepted paths beat any other tree of at most N nodes, by the same measurement
    assert result["expected_tokens_per_step"] >= independent["expected_tokens_per_step"] - 1e-9
    if result["previous_num_nodes"] <= nodes:
        assert result["expected_tokens_per_step"] >= result["previous_expected_tokens_per_step"] - 1e-9

    model, tok = load_model(path, device="cpu")
    assert Tree.from_paths(model.spec.tree).to_ranked_list() == result[key]
    drafted = entry.proposer_class.tree_for(model)  # what the engine drafts with, in the order written
    assert drafted.to_ranked_list() == result[key] and drafted.ranked
    # a busy batched step verifies the most often accepted paths first
    assert drafted.within(3)[0].paths == tuple(sorted(map(tuple, result[key][:2]), key=lambda p: (len(p), p)))
    stream = get_generate_stream_function(model, path)
    steps, tokens = tiny.stream_greedy(stream, model, tok, tiny.PROMPTS[:4], stock_texts)
    assert tokens / steps > 1.0


def test_a_checkpoint_without_a_tree_is_refused_with_the_reason(tmp_path, base_dir, base_model, stock_texts):
    entry = method("cllm")
    path = tiny._cllm(4)(entry.write_checkpoint, str(tmp_path / "cllm-vicuna-tiny"), base_dir, base_model)
    data = heldout_answers(str(tmp_path / "heldout.json"), stock_texts, tiny.PROMPTS[8:9])
    with pytest.raises(ValueError, match="drafts no tree"):
        tree_search.main(["--model-path", path, "--data_path", data, "--max-len", "128", "--dry-run"])


# -- a tree chosen per step by the heads' confidence (EAGLE-2's dynamic tree), estimated offline ------------


def test_a_dynamic_tree_spends_its_nodes_where_the_heads_are_unsure():
    """Two positions, two nodes each. Where depth 1 is sure, the two nodes make a chain and accept two
    drafts; where it is torn, they go wide and catch the runner-up. One static tree cannot do both."""
    from fastchat_spec.train.dynamic_tree import accepted_lengths

    probs = torch.tensor([[[0.99, 0.01], [0.90, 0.10]],   # sure: (0), (0, 0) are the two most confident
                          [[0.50, 0.45], [0.30, 0.20]]])  # torn: (0), (1) beat (0, 0) = 0.15
    ranks = torch.tensor([[0, 0], [1, -1]])  # the true tokens: the chain, then the runner-up (no depth 2)
    assert accepted_lengths(probs.log(), ranks, num_nodes=2).tolist() == [2, 1]
    assert accepted_lengths(probs.log(), ranks, num_nodes=1).tolist() == [1, 0]
    static = most_frequent_tree(accepted_path_frequencies(Counter({(0, 0): 1, (1, -1): 1}), 2), 2)
    assert 1 + accepted_lengths(probs.log(), ranks, 2).float().mean() > joint_expected_length(
        static, accepted_path_frequencies(Counter({(0, 0): 1, (1, -1): 1}), 2))


def test_the_dynamic_estimate_is_reported_for_medusa_heads_and_refused_for_others(tmp_path, base_dir, base_model,
                                                                                 stock_texts):
    name, checkpoint, nodes = CASES["medusa"]
    path = checkpoint.write(method(name).write_checkpoint, str(tmp_path / "medusa-vicuna-tiny"), base_dir,
                            base_model)
    data = heldout_answers(str(tmp_path / "heldout.json"), stock_texts)
    result = tree_search.main(["--model-path", path, "--data_path", data, "--num-nodes", "15", "--max-len", "256",
                               "--dynamic", "--dry-run"])
    rows = result["dynamic_vs_static"]
    assert [r["nodes"] for r in rows] == [7, 15]
    assert rows[-1]["static"] == result["expected_tokens_per_step"]
    assert all(r["dynamic"] > 1.0 for r in rows)
    assert rows[1]["dynamic"] >= rows[0]["dynamic"]  # more nodes never accept less

    name, checkpoint, _ = CASES["hydra"]
    hydra = checkpoint.write(method(name).write_checkpoint, str(tmp_path / "hydra-vicuna-tiny"), base_dir, base_model)
    with pytest.raises(ValueError, match="needs Medusa heads"):
        tree_search.main(["--model-path", hydra, "--data_path", data, "--max-len", "256", "--dynamic", "--dry-run"])


def test_for_heads_that_read_their_path_a_dynamic_tree_goes_deep_where_sure_and_wide_where_torn():
    """Hydra's nodes are drafted along their paths: two positions over the full tree of ranks < 2 and depth 2
    (nodes (0), (1), (0, 0), (0, 1), (1, 0), (1, 1)); with two nodes a position picks its own shape."""
    from fastchat_spec.train.dynamic_tree import accepted_paths, chosen_accepted, full_tree, most_confident

    tree = full_tree(top=2, depth=2)
    assert tree.num_nodes == 7
    order = [tree.paths.index(p) + 1 for p in [(0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)]]
    confidence = torch.zeros(2, 7)
    hit = torch.zeros(2, 7, dtype=torch.bool)
    hit[:, 0] = True
    confidence[0, order] = torch.tensor([0.99, 0.01, 0.9, 0.09, 0.005, 0.005]).log()  # sure: a chain
    hit[0, order[0]] = hit[0, order[2]] = True
    confidence[1, order] = torch.tensor([0.5, 0.45, 0.15, 0.1, 0.2, 0.1]).log()  # torn: the runner-up
    hit[1, order[1]] = True
    dynamic = chosen_accepted(hit, most_confident(confidence, 2), tree)
    assert dynamic.tolist() == [2, 1]
    frequencies = accepted_path_frequencies(accepted_paths(hit, tree), 2)
    static = joint_expected_length(most_frequent_tree(frequencies, 2), frequencies) - 1  # per position
    assert static * 2 < dynamic.sum()  # one fixed pair of nodes cannot serve both positions
    assert joint_expected_length(most_frequent_tree(frequencies, 6), frequencies) - 1 == 1.5  # the whole tree: 2, 1


def test_the_dynamic_estimate_for_hydra_drafts_the_engines_tokens_and_more_nodes_never_accept_less(
        tmp_path, base_dir, base_model):
    from fastchat_spec.train import dynamic_tree

    name, checkpoint, _ = CASES["hydra++"]
    path = checkpoint.write(method(name).write_checkpoint, str(tmp_path / "hydra-vicuna-tiny"), base_dir, base_model)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"turns": [p], "category": "x"}) + "\n" for p in tiny.PROMPTS[8:11]))
    result = dynamic_tree.main(["--model-path", path, "--prompts", str(prompts), "--num-prompts", "3",
                                "--max-new-tokens", "24", "--top", "3", "--sizes", "3,9,39"])
    assert result["positions"] > 0 and result["full_tree_nodes"] == 3 + 9 + 27
    rows = result["tokens_per_step"]
    for kind in ("static_best", "dynamic"):
        assert 1.0 <= rows[3][kind] <= rows[9][kind] <= rows[39][kind]
    assert rows[39]["static_best"] == rows[39]["dynamic"]  # the whole full tree: the same nodes either way

    model, _ = load_model(path, device="cpu")
    feature = torch.randn(2, model.config.hidden_size)
    tree = dynamic_tree.full_tree(2, 3)
    tokens, confidence = dynamic_tree.drafted_confidences(model.drafter, model.base.get_input_embeddings(), feature,
                                                          torch.tensor([5, 7]), tree)
    assert (confidence[:, 1:] <= 0).all()
    assert (confidence[:, 1:] <= confidence[:, tree.parent[1:]]).all()  # a path is never surer than its prefix
    chain = [tree.paths.index((0,) * d) + 1 for d in (1, 2, 3)]
    heads, embed = model.drafter, model.base.get_input_embeddings()
    with torch.no_grad():
        x, path = feature, [torch.tensor([5, 7])]
        for d in range(3):  # the top-1 chain by hand, head by head
            inputs = torch.cat([x] + [embed(t) for t in path], dim=-1)  # the feature, then the path's tokens
            path.append(heads.head(d, inputs)[0].argmax(-1))
    assert torch.equal(tokens[:, chain], torch.stack(path[1:], 1))


def test_the_hydra_estimate_refuses_other_checkpoints_with_the_tool_to_use(tmp_path, base_dir, base_model):
    from fastchat_spec.train import dynamic_tree

    name, checkpoint, _ = CASES["medusa"]
    path = checkpoint.write(method(name).write_checkpoint, str(tmp_path / "medusa-vicuna-tiny"), base_dir, base_model)
    with pytest.raises(SystemExit, match="tree_search --dynamic"):
        dynamic_tree.main(["--model-path", path])
