"""Draft trees as data: validation, index tensors, the greedy builder and truncation."""
from __future__ import annotations

import pytest
import torch

from fastchat_spec.generate.tree import (
    Tree,
    assumed_accuracy,
    build_tree,
    chain,
    default_tree,
    expected_length,
)

PATHS = [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]]


def _is_prefix_closed(paths) -> bool:
    known = {tuple(p) for p in paths}
    return all(tuple(p[:k]) in known for p in paths for k in range(1, len(p)))


def test_missing_parent_is_refused_with_the_path_named():
    with pytest.raises(ValueError, match=r"\[0, 1\].*no parent \[0\]"):
        Tree.from_paths([[1], [0, 1]])


def test_negative_rank_is_refused():
    with pytest.raises(ValueError, match="negative rank"):
        Tree.from_paths([[0], [-1]])


def test_paths_are_sorted_deduplicated_and_root_is_node_zero():
    tree = Tree.from_paths([[0, 0], [1], [0], [0], []])
    assert tree.paths == ((0,), (1,), (0, 0))
    assert tree.num_nodes == 4
    assert tree.to_list() == [[0], [1], [0, 0]]


def test_index_tensors_describe_the_tree():
    tree = Tree.from_paths(PATHS)
    # nodes: 0 root, 1 (0), 2 (1), 3 (0,0), 4 (0,1), 5 (1,0), 6 (0,0,0)
    assert tree.parent.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert tree.depth.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert tree.rank.tolist() == [0, 0, 1, 0, 1, 0, 0]
    assert tree.max_depth == 3
    assert [tree.max_rank(d) for d in (1, 2, 3)] == [2, 2, 1]
    assert tree.nodes_at_depth(2) == [3, 4, 5]

    # ancestors[i, j]: j is i or one of its ancestors (the root is everyone's).
    expected = torch.zeros(7, 7, dtype=torch.bool)
    for i, chain_ in enumerate([[0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 4], [0, 2, 5], [0, 1, 3, 6]]):
        expected[i, chain_] = True
    assert torch.equal(tree.ancestors, expected)

    # children in rank order, -1 padded.
    assert tree.children.tolist() == [[1, 2], [3, 4], [5, -1], [6, -1], [-1, -1], [-1, -1], [-1, -1]]

    # path_nodes: root .. node, padded with the node itself.
    assert tree.path_nodes.tolist() == [
        [0, 0, 0, 0], [0, 1, 1, 1], [0, 2, 2, 2], [0, 1, 3, 3], [0, 1, 4, 4], [0, 2, 5, 5], [0, 1, 3, 6]]


def test_empty_tree_is_just_the_root():
    tree = Tree.from_paths([])
    assert tree.num_nodes == 1 and tree.max_depth == 0
    assert tree.children.tolist() == [[-1]]
    assert tree.path_nodes.tolist() == [[0]]


def test_chain():
    tree = chain(4)
    assert tree.to_list() == [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]]
    assert tree.parent.tolist() == [0, 0, 1, 2, 3]


@pytest.mark.parametrize("budget", [1, 5, 20, 63])
def test_build_tree_is_prefix_closed_and_respects_the_budget(budget):
    accuracy = assumed_accuracy(4)
    tree = build_tree(accuracy, budget)
    assert len(tree.paths) == budget
    assert _is_prefix_closed(tree.paths)
    # Greedy by path probability: no unchosen frontier node beats a chosen one.
    chosen = set(tree.paths)

    def prob(p):
        out = 1.0
        for d, r in enumerate(p):
            out *= accuracy[d][r]
        return out

    worst_chosen = min(prob(p) for p in chosen)
    frontier = {p[:-1] + (p[-1] + 1,) for p in chosen} | {p + (0,) for p in chosen if len(p) < len(accuracy)}
    frontier -= chosen
    assert all(prob(p) <= worst_chosen + 1e-12 for p in frontier if p[-1] < len(accuracy[len(p) - 1]))


def test_build_tree_stops_when_the_accuracy_table_runs_out():
    tree = build_tree([[0.9, 0.1]], num_nodes=10)  # one depth, two ranks: only two nodes exist
    assert tree.to_list() == [[0], [1]]


def test_bigger_budget_never_lowers_expected_length():
    accuracy = assumed_accuracy(5)
    lengths = [expected_length(build_tree(accuracy, n), accuracy) for n in (1, 4, 16, 64)]
    assert lengths == sorted(lengths)
    assert expected_length(Tree.from_paths([]), accuracy) == 1.0


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5])
def test_default_tree_for_any_head_count(heads):
    tree = default_tree(heads)
    assert 1 <= tree.max_depth <= heads
    assert _is_prefix_closed(tree.paths)
    assert len(tree.paths) <= 63
    assert tree.ancestors.shape == (tree.num_nodes, tree.num_nodes)


def test_default_tree_needs_a_head():
    with pytest.raises(ValueError, match="at least 1 head"):
        default_tree(0)


def test_truncation_drops_deeper_paths_only():
    tree = Tree.from_paths(PATHS)
    cut = tree.truncated(2)
    assert cut.to_list() == [[0], [1], [0, 0], [0, 1], [1, 0]]
    assert tree.truncated(1).to_list() == [[0], [1]]
    assert tree.truncated(10).to_list() == tree.to_list()
    assert _is_prefix_closed(cut.paths)


def test_part_of_a_tree_keeps_its_likeliest_paths_at_the_same_padded_width():
    """A busy batched step verifies ``Tree.within(n)``; for paths given in no particular order (sorted),
    the shallow, top-ranked ones first under the assumed accuracy profile. The part is still a tree."""
    tree = Tree.from_paths(default_tree(4, num_nodes=63).to_list())
    assert not tree.ranked
    part, source = tree.within(16)
    assert part.num_nodes == 16 and _is_prefix_closed(part.paths)
    assert tuple(part.path_nodes.shape) == (16, tree.max_depth + 1)
    assert [tree.paths[i - 1] for i in source[1:].tolist()] == list(part.paths) and int(source[0]) == 0
    assert tree.within(2)[0].to_list() == [[0]]  # the top-1 guess of the first draft
    assert tree.within(3)[0].to_list() == [[0], [1]]  # a tie with [0, 0] goes to the shallower path
    whole, all_nodes = tree.within(1000)
    assert whole is tree and all_nodes.tolist() == list(range(tree.num_nodes))
    assert tree.within(0)[0].num_nodes == 1  # the root alone: one token per step


def test_a_tree_given_most_likely_first_is_cut_in_that_order():
    """Medusa's published choice lists come most likely first; a busy step keeps their first paths."""
    published_order = [[0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0]]
    tree = Tree.from_paths(published_order)
    assert tree.ranked and tree.to_ranked_list() == published_order
    assert tree.to_list() == sorted(published_order, key=lambda p: (len(p), p))  # node order: by depth
    assert tree.within(4)[0].paths == ((0,), (1,), (0, 0))
    assert tree.truncated(2).to_ranked_list() == [[0], [0, 0], [1], [0, 1], [2], [1, 0]]
    assert not Tree.from_paths(sorted(published_order, key=lambda p: (len(p), p))).ranked  # no order given
    assert not Tree.from_paths([[0, 0], [0]]).ranked  # a child before its parent is no ranking
