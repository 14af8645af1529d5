"""Sparse candidate trees as data.

A tree is a list of paths, exactly like Medusa's ``medusa_choices``: the path
``(0, 2)`` is the node reached by taking the top-1 candidate of draft depth 1
and then the top-3 candidate of draft depth 2. Node 0 is the root: the last
committed token, which has not been through the base model yet.

``Tree`` turns the paths into the index tensors that the engine needs once, so
nothing about the tree shape is recomputed per step. A list given most likely
path first (``Tree.ranked``, as Medusa publishes its lists and our trainers
write them) also says which part of the tree a busy batched step keeps
(``Tree.within``).

Choosing a tree: ``build_tree`` grows one from per-depth accuracies assuming
independent heads (the Medusa paper); ``most_frequent_tree`` picks the paths
most often accepted on held-out data, measured jointly
(``accepted_path_frequencies``; ``fastchat_spec/train/tree_search.py`` measures).
"""
from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import torch

Path = tuple[int, ...]


@dataclass(frozen=True)
class Tree:
    paths: tuple[Path, ...]  # sorted by depth, then lexicographically; root excluded
    parent: torch.Tensor = field(repr=False)  # (N,) parent node index, root -> 0
    depth: torch.Tensor = field(repr=False)  # (N,) 0 for the root
    rank: torch.Tensor = field(repr=False)  # (N,) top-k rank at its depth, root -> 0
    ancestors: torch.Tensor = field(repr=False)  # (N, N) bool, [i, j]: j is i or an ancestor of i
    children: torch.Tensor = field(repr=False)  # (N, C) child node indices in rank order, -1 padded
    path_nodes: torch.Tensor = field(repr=False)  # (N, D+1) nodes from root to i, padded with i
    given: tuple[Path, ...] = field(default=(), repr=False)  # the paths in the order given (see ``ranked``)

    @property
    def num_nodes(self) -> int:
        return len(self.paths) + 1

    @functools.cached_property  # read at every step by the loop's length buckets
    def max_depth(self) -> int:
        return max((len(p) for p in self.paths), default=0)

    def max_rank(self, depth: int) -> int:
        """How many top-k candidates depth ``depth`` (1-based) needs."""
        return max((p[depth - 1] + 1 for p in self.paths if len(p) >= depth), default=0)

    def nodes_at_depth(self, depth: int) -> list[int]:
        return [i + 1 for i, p in enumerate(self.paths) if len(p) == depth]

    def truncated(self, max_depth: int) -> "Tree":
        """The same tree with paths deeper than ``max_depth`` removed (the given order kept)."""
        return Tree.from_paths([p for p in self.given if len(p) <= max_depth])

    @functools.cached_property
    def ranked(self) -> bool:
        """True when the paths were given most likely first, as Medusa's published choice lists are.

        That is: not simply in sorted order, and every path after its parent.
        Trees chosen by ``build_tree``, ``most_frequent_tree`` and
        ``tree_search`` are written in that order.
        """
        seen: set[Path] = set()
        for p in self.given:
            if len(p) > 1 and p[:-1] not in seen:
                return False
            seen.add(p)
        return self.given != self.paths

    def to_ranked_list(self) -> list[list[int]]:
        """The paths in the order given (most likely first for a chosen tree), for a checkpoint's config."""
        return [list(p) for p in self.given]

    def in_place(self, node: int) -> bool:
        """True when the path to ``node`` already sits in contiguous slots (nothing to move)."""
        return bool((self.path_nodes[node, : int(self.depth[node]) + 1].cpu()
                     == torch.arange(int(self.depth[node]) + 1)).all())

    def to(self, device) -> "Tree":
        moved = {f: getattr(self, f).to(device) for f in
                 ("parent", "depth", "rank", "ancestors", "children", "path_nodes")}
        return replace(self, **moved)

    def to_list(self) -> list[list[int]]:
        return [list(p) for p in self.paths]

    def within(self, num_nodes: int) -> tuple[Tree, torch.Tensor]:
        """The best part of this tree with at most ``num_nodes`` nodes (root included), for a busy step.

        Keeps the first paths of a ``ranked`` tree (most likely first, as
        measured when it was chosen); otherwise the paths most likely under
        the assumed accuracy profile (``assumed_accuracy``: a shallower node,
        or a lower rank at the same depth, is more likely). Either way the
        part is prefix-closed.

        Returns the part, whose ``path_nodes`` keep this tree's width (an
        accepted path has the same padded shape either way), and ``source``:
        for each of its nodes, the node of this tree it is (drafts are made
        for the whole tree and read at ``source``).
        """
        num_nodes = max(num_nodes, 1)
        if num_nodes >= self.num_nodes:
            return self, torch.arange(self.num_nodes, device=self.parent.device)
        if self.ranked:
            kept = list(self.given[: num_nodes - 1])
        else:
            top_k = max(self.max_rank(d) for d in range(1, self.max_depth + 1))
            accuracy = assumed_accuracy(self.max_depth, top_k)
            likelihood = {p: path_probability(p, accuracy) for p in self.paths}
            kept = most_likely_first(self.paths, likelihood)[: num_nodes - 1]
        part = Tree.from_paths(kept, width=self.max_depth + 1)
        index = {p: i + 1 for i, p in enumerate(self.paths)}
        source = torch.tensor([0] + [index[p] for p in part.paths], dtype=torch.long)
        return part.to(self.parent.device), source.to(self.parent.device)

    @staticmethod
    def from_paths(paths: Sequence[Sequence[int]], width: int = 0) -> "Tree":
        """The tree of these rank paths; ``width`` pads ``path_nodes`` to at least that many columns.

        Nodes are numbered in sorted order (by depth, then rank); the order the
        paths came in is kept as ``given``, the likelihood order of a ranked tree.
        """
        given = tuple(dict.fromkeys(tuple(int(x) for x in p) for p in paths if len(p) > 0))
        clean = sorted(given, key=lambda p: (len(p), p))
        known = set(clean)
        for p in clean:
            if any(x < 0 for x in p):
                raise ValueError(f"tree path {list(p)} has a negative rank; ranks are 0-based top-k indices")
            if len(p) > 1 and p[:-1] not in known:
                raise ValueError(
                    f"tree path {list(p)} has no parent {list(p[:-1])}; every prefix of a path must be in the tree"
                )
        index = {p: i + 1 for i, p in enumerate(clean)}
        n = len(clean) + 1
        parent = torch.zeros(n, dtype=torch.long)
        depth = torch.zeros(n, dtype=torch.long)
        rank = torch.zeros(n, dtype=torch.long)
        ancestors = torch.eye(n, dtype=torch.bool)
        ancestors[:, 0] = True
        kids: list[list[int]] = [[] for _ in range(n)]
        for p, i in index.items():
            par = index.get(p[:-1], 0)
            parent[i], depth[i], rank[i] = par, len(p), p[-1]
            kids[par].append(i)
            for k in range(1, len(p)):
                ancestors[i, index[p[:k]]] = True
        max_kids = max((len(k) for k in kids), default=0)
        children = torch.full((n, max(max_kids, 1)), -1, dtype=torch.long)
        for i, k in enumerate(kids):
            k.sort(key=lambda j: rank[j].item())
            children[i, : len(k)] = torch.tensor(k, dtype=torch.long)
        max_d = max(max((len(p) for p in clean), default=0), width - 1)
        path_nodes = torch.zeros(n, max_d + 1, dtype=torch.long)
        for i in range(n):
            chain = [i]
            while chain[-1] != 0:
                chain.append(int(parent[chain[-1]]))
            chain.reverse()
            path_nodes[i] = torch.tensor(chain + [i] * (max_d + 1 - len(chain)))
        return Tree(tuple(clean), parent, depth, rank, ancestors, children, path_nodes, given)


def chain(length: int) -> Tree:
    """A single path of ``length`` top-1 guesses (Jacobi windows, or a plain draft chain)."""
    return Tree.from_paths([[0] * d for d in range(1, length + 1)])


def build_tree(accuracy: Sequence[Sequence[float]], num_nodes: int) -> Tree:
    """Grow a tree greedily by expected accepted length, as in the Medusa paper.

    ``accuracy[d][r]`` is the measured probability that the rank-``r`` candidate
    of draft depth ``d + 1`` is the right token. A path is accepted with the
    product of its nodes' accuracies (the paper's independence assumption), and
    the expected accepted length is the sum of that over the tree's nodes. The
    probability of a child never exceeds its parent's, so taking the most likely
    frontier node each time keeps the tree prefix-closed and is optimal for this
    objective. ``num_nodes`` excludes the root.
    """
    frontier: list[tuple[float, Path, float]] = []  # (-path prob, path, parent's path prob)

    def push(path: Path, parent_prob: float) -> None:
        d, r = len(path) - 1, path[-1]
        if d < len(accuracy) and r < len(accuracy[d]):
            heapq.heappush(frontier, (-parent_prob * float(accuracy[d][r]), path, parent_prob))

    push((0,), 1.0)
    chosen: list[Path] = []
    while frontier and len(chosen) < num_nodes:
        neg, path, parent_prob = heapq.heappop(frontier)
        chosen.append(path)
        push(path[:-1] + (path[-1] + 1,), parent_prob)  # next sibling
        push(path + (0,), -neg)  # first child
    return Tree.from_paths(chosen)


def path_probability(path: Path, accuracy: Sequence[Sequence[float]]) -> float:
    """How likely ``path`` is accepted if depths err independently: the product of its ranks' accuracies."""
    prob = 1.0
    for d, r in enumerate(path):
        prob *= accuracy[d][r] if d < len(accuracy) and r < len(accuracy[d]) else 0.0
    return prob


def most_likely_first(paths, likelihood: Mapping[Path, float]) -> list[Path]:
    """``paths`` by falling likelihood; ties to the shorter path, then the smaller ranks, so that a prefix
    (never less likely than its extensions) always comes before them and every head of the list is a tree."""
    return sorted(paths, key=lambda p: (-likelihood.get(p, 0.0), len(p), p))


def expected_length(tree: Tree, accuracy: Sequence[Sequence[float]]) -> float:
    """Expected tokens per step (accepted nodes + the bonus token) under ``accuracy``."""
    return 1.0 + sum(path_probability(p, accuracy) for p in tree.paths)


# Accuracy profile used when a checkpoint ships no tree: top-1 accuracy falling
# with depth, top-k mass falling with rank. Only the shape matters for the tree.
def assumed_accuracy(num_heads: int, top_k: int = 10) -> list[list[float]]:
    rows = []
    for d in range(num_heads):
        top1 = 0.6 * (0.75**d)
        rows.append([top1 * (0.45**r) for r in range(top_k)])
    return rows


@functools.lru_cache(maxsize=64)
def default_tree(num_heads: int, num_nodes: int = 63) -> Tree:
    """A tree for any head count >= 1 (Medusa's shipped trees need >= 4 heads)."""
    if num_heads < 1:
        raise ValueError(f"a draft tree needs at least 1 head, got {num_heads}")
    return build_tree(assumed_accuracy(num_heads), num_nodes)


# --------------------------------------------------------------------------- trees from joint acceptance
# With greedy verification at most one child of a node can be accepted (the one
# holding the base's own next token), so a node is accepted exactly when its
# rank path is the one the true continuation takes, whatever else the tree
# holds. The expected accepted length of a tree is then the sum, over its
# nodes, of how often its rank path was taken: no independence assumption.
def accepted_path_frequencies(rank_tuples: Mapping[Sequence[int], int], max_rank: int) -> dict[Path, float]:
    """How often each rank path is accepted, from measured rank tuples.

    ``rank_tuples`` maps a tuple ``(r_1, ..., r_D)`` (at one held-out position,
    r_k is the rank of the true token among draft depth k's candidates, given
    the true tokens before it) to the number of positions that had it. A tuple
    stops at its first rank that is negative (no target there) or
    ``>= max_rank`` (no tree node reaches it). Returns ``{path: share of all
    positions whose tuple starts with path}``; every prefix of a counted path
    is counted at least as often.
    """
    total = sum(rank_tuples.values())
    if total <= 0:
        raise ValueError("no rank tuples to count: the held-out data gave no position with a draft target")
    counts: dict[Path, int] = {}
    for ranks, n in rank_tuples.items():
        path: Path = ()
        for r in ranks:
            if not 0 <= int(r) < max_rank:
                break
            path += (int(r),)
            counts[path] = counts.get(path, 0) + n
    return {p: c / total for p, c in counts.items()}


def most_frequent_tree(frequencies: Mapping[Path, float], num_nodes: int) -> Tree:
    """The tree of at most ``num_nodes`` paths with the highest expected accepted length.

    That is the ``num_nodes`` most frequent paths. Ties go to the shorter path,
    then to the smaller ranks, so a prefix always comes before its extensions
    (it is at least as frequent) and the tree stays prefix-closed.
    """
    return Tree.from_paths(most_likely_first(frequencies, frequencies)[:num_nodes])


def joint_expected_length(tree: Tree, frequencies: Mapping[Path, float]) -> float:
    """Expected tokens per step of ``tree`` (accepted nodes + the bonus token) under measured path frequencies."""
    return 1.0 + sum(frequencies.get(p, 0.0) for p in tree.paths)


def replayed_tokens_per_step(tree: Tree, runs: Sequence[Sequence[Sequence[int]]]) -> float:
    """Tokens per step of greedy decoding replayed along held-out answers, with ``tree``.

    ``runs``: per answer, the rank tuple of each of its positions in order (as
    in ``accepted_path_frequencies``). A step at position t accepts the longest
    prefix of t's tuple that is a tree path, and the next step starts after
    the tokens it committed (accepted + the bonus). Unlike the average over all
    positions (``joint_expected_length``), this visits positions as decoding
    does: a stretch whose drafts land is crossed in few steps, so hard
    stretches weigh more, as they do in a measured tau.
    """
    paths = set(tree.paths)
    tokens = steps = 0
    for run in runs:
        t = 0
        while t < len(run):
            ranks, accepted = tuple(run[t]), 0
            while accepted < len(ranks) and ranks[:accepted + 1] in paths:
                accepted += 1
            tokens, steps, t = tokens + accepted + 1, steps + 1, t + accepted + 1
    if steps == 0:
        raise ValueError("no positions to replay: the held-out data gave no position with a draft target")
    return tokens / steps
