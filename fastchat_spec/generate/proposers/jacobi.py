"""Jacobi proposer: the n-token window of Jacobi decoding, verified by the shared engine.

References: Santilli et al. 2023, "Accelerating Transformer Inference for
Translation via Parallel Decoding" (Jacobi decoding), and Kou et al. 2024,
"CLLMs: Consistency Large Language Models" (arXiv 2403.00835), whose models are
trained so that this iteration converges in few steps.

Jacobi decoding keeps a window of n tokens: the last committed token (the
engine's root) and n-1 guesses for the tokens after it. One forward of the
window gives, at every row, the model's prediction of the next position. The
window is a chain, so the engine's usual verification applies unchanged: the
guesses equal to the predictions before them are the converged prefix and are
committed (greedy: exactly autoregressive greedy decoding; sampling: lossless
rejection sampling with point-mass drafts), with only their KV entries kept.

The Jacobi update is ``observe``: the predictions of that same forward (the
event's logits) at the rows after the accepted prefix become the next window's
guesses, so no extra forward is spent. A step that accepts ``a`` guesses
leaves only ``n-1-a`` predictions for the new window; the ``a`` missing
guesses at its end are filled with tokens drawn from the prompt, as CLLM
initialises its windows (and as its training trajectories start), from a pool
fixed at prefill, so the window alone needs no host round trip.

Beside the window, a second branch of the tree (``lookup_tokens`` long, by
default as long as the window's guesses; 0 turns it off) holds guesses copied
from the context, as lookahead decoding (Fu et al. 2024, "Break the
Sequential Dependency of LLM Inference Using Lookahead Decoding", which the
CLLM paper combines with CLLMs) guesses from an n-gram pool: the tokens that
followed the last earlier occurrence of the longest suffix (up to
``NGRAM`` tokens, the root included) of the prompt and the answer so far.
Both branches are verified in the same forward; the deeper accepted one is
committed, so the text is unchanged, and the Jacobi update reads the
predictions along the branch that was accepted. ``ContextNgrams`` keeps the
look-up table on the host, which reads each step's committed tokens (this
proposer's steps are host-driven already).
"""
from __future__ import annotations

import torch

from fastchat_spec.generate.proposers.base import Committed, Proposer
from fastchat_spec.generate.tree import Tree

OPTION = "n_token_seq_length"  # FastChat main's request key for the window length
LOOKUP_OPTION = "lookup_tokens"  # length of the branch of guesses copied from the context; default: window - 1
NGRAM = 3  # the longest suffix looked up in the context (then shorter ones)
DEFAULT_WINDOW = 16
MAX_WINDOW = 256
FILL_SEED = 0  # the filler pool depends only on the prompt, so runs are reproducible


class JacobiProposer(Proposer):
    def __init__(self, window: int, device: torch.device, lookup: int = 0):
        self.window = window
        tree = jacobi_tree(window - 1, lookup)
        self.tree = tree.to(device)
        self.window_rows = branch_nodes(tree, 0).to(device)  # the window's guesses' nodes, shallowest first
        self.lookup_rows = branch_nodes(tree, 1).to(device)  # the context branch's nodes
        self.first_lookup_node = int(self.lookup_rows[0]) if lookup else None
        self.device = device
        self.guess = None  # (n-1,) guesses for the positions after the next root
        self.fill = None  # prompt tokens for the tail of a window or of a short copy from the context
        self.offsets = torch.arange(window - 1, device=device)
        self.context = ContextNgrams(lookup)

    @classmethod
    def tree_for(cls, model, options=None):
        window = window_length(model, options or {})
        return jacobi_tree(window - 1, lookup_length(options or {}, window))

    @classmethod
    def build(cls, model, device, options):
        window = window_length(model, options)
        return cls(window, device, lookup_length(options, window))

    def observe(self, event: Committed) -> None:
        if self.fill is None:  # the prefill: ``event.tokens`` is the prompt
            self.fill = prompt_filler(event.tokens, max(self.window - 1, self.context.length))
            self.guess = self.fill[: self.window - 1]
            self.context.extend(event.tokens.tolist())
            return
        # Row r of the forward predicts the position after node r. Along the accepted branch, the root
        # and its a accepted guesses were committed and the last of them chose the next root; the
        # branch's later nodes predict the positions after it: the Jacobi update. After those
        # predictions come filler tokens. Without an accepted guess, the window's branch updates.
        rows = self.window_rows
        if self.context.length:
            head = min(2, event.path.shape[-1])  # the root and the accepted path's first node, if any
            depth, *rest = torch.cat([event.depth, event.path[:head], event.tokens]).tolist()
            self.context.extend(rest[head : head + depth + 1])
            if depth and rest[1] == self.first_lookup_node:
                rows = self.lookup_rows
        predictions = torch.cat([event.logits[rows].argmax(dim=-1), self.fill])
        self.guess = predictions.index_select(0, event.depth + self.offsets)  # the rows after depth a, then fill

    def propose(self, root: torch.Tensor) -> torch.Tensor:
        drafts = torch.empty(self.tree.num_nodes - 1, dtype=torch.long, device=self.device)
        drafts[self.window_rows - 1] = self.guess
        if self.context.length:
            copied = self.context.continuation(int(root))
            found = torch.tensor(copied, dtype=torch.long, device=self.device)
            drafts[self.lookup_rows - 1] = torch.cat([found, self.fill[: self.context.length - len(copied)]])
        return drafts


class ContextNgrams:
    """Where each n-gram (n <= ``NGRAM``) of the prompt and answer last ended, to copy what followed it."""

    def __init__(self, length: int):
        self.length = length  # tokens a continuation holds at most (0: no look-ups)
        self.ids: list[int] = []
        self.after: dict[tuple[int, ...], int] = {}  # n-gram -> the position that followed its last occurrence

    def extend(self, ids: list[int]) -> None:
        if not self.length:
            return
        for token in ids:
            self.ids.append(token)
            end = len(self.ids)
            for n in range(1, min(NGRAM, end) + 1):
                self.after[tuple(self.ids[end - n : end])] = end

    def continuation(self, root: int) -> list[int]:
        """Up to ``length`` tokens that followed the longest earlier occurrence of (the context's end, ``root``)."""
        for n in range(min(NGRAM, len(self.ids) + 1), 0, -1):
            start = self.after.get(tuple(self.ids[len(self.ids) - n + 1 :]) + (root,))
            if start is not None:
                return self.ids[start : start + self.length]
        return []


def jacobi_tree(guesses: int, lookup: int = 0) -> Tree:
    """The window's chain of ``guesses`` (rank 0 at depth 1) and, beside it, the context branch (rank 1)."""
    return Tree.from_paths([[0] * d for d in range(1, guesses + 1)]
                           + [[1] + [0] * (d - 1) for d in range(1, lookup + 1)])


def branch_nodes(tree: Tree, rank: int) -> torch.Tensor:
    """The nodes of the chain that starts with the root's child of ``rank``, shallowest first (none: empty)."""
    ends = [i + 1 for i, p in enumerate(tree.paths) if p[0] == rank and all(x == 0 for x in p[1:])]
    if not ends:
        return torch.zeros(0, dtype=torch.long)
    deepest = max(ends, key=lambda node: int(tree.depth[node]))
    return tree.path_nodes[deepest, 1 : int(tree.depth[deepest]) + 1].clone()


def window_length(model, options: dict) -> int:
    """The request's ``n_token_seq_length``, else the checkpoint's, else 16."""
    if options.get(OPTION) is not None:
        return checked_window(options[OPTION], f"the request's {OPTION}")
    return checked_window(model.spec.num_heads or None, f"the checkpoint's {OPTION} (config.json)")


def lookup_length(options: dict, window: int) -> int:
    """The request's or checkpoint's ``lookup_tokens`` (0 to ``MAX_WINDOW``), else the window's guesses."""
    value = options.get(LOOKUP_OPTION)
    if value is None:
        return window - 1
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{LOOKUP_OPTION} must be an integer, got {value!r}; 0 turns the context branch off") \
            from None
    if not 0 <= n <= MAX_WINDOW:
        raise ValueError(f"{LOOKUP_OPTION} is {n}; use 0 (no context branch) to {MAX_WINDOW}")
    return n


def checked_window(value, where: str) -> int:
    """``value`` as a Jacobi window length; None means the default. Errors name ``where`` and the fix."""
    if value is None:
        return DEFAULT_WINDOW
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be an integer, got {value!r}; fix it, or leave it out for the "
                         "default") from None
    if not 1 <= n <= MAX_WINDOW:
        raise ValueError(f"{where} is {n}; use a Jacobi window of 1 to {MAX_WINDOW} tokens (CLLMs use 16 to 32)")
    return n


def prompt_filler(prompt: torch.Tensor, width: int) -> torch.Tensor:
    """``width`` tokens drawn uniformly from the prompt (CLLM's window initialisation)."""
    if width == 0:
        return prompt[:0]
    generator = torch.Generator().manual_seed(FILL_SEED)
    picks = torch.randint(prompt.numel(), (width,), generator=generator)
    return prompt[picks.to(prompt.device)]
