"""Sampling is lossless: speculative tokens have the distribution FastChat's sampler would give.

(a) The acceptance rule alone, exactly: a hand-made tree with fixed drafts and
fixed target distributions, sampled many times, against the exact
distribution of the first two tokens (first ~ p_root; the second ~ p_child
when the first is a draft child's token, and no second token otherwise).
(b) End to end: the first tokens of our ``generate_stream`` against FastChat's
own on the base model and against the exact law (enumerated with FastChat's
logits processors), same sampling parameters, by total variation distance.
"""
from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
from fastchat.model.model_adapter import get_generate_stream_function, load_model
from fastchat.serve.inference import generate_stream as fastchat_generate_stream

from fastchat_spec.adapters.medusa import write_medusa_checkpoint
from fastchat_spec.generate import accept, batch_step
from fastchat_spec.generate.batch_step import SAMPLED_STEP_ENV
from fastchat_spec.generate.request import parse_request
from fastchat_spec.generate.row_sampling import RowSampling, row_probs
from fastchat_spec.generate.sampling import SamplingParams
from fastchat_spec.generate.tree import Tree
from tests import tiny
from tests.tiny import CONTEXT

PATHS = [[0], [1], [0, 0], [0, 1], [1, 0]]  # nodes: 0 root, 1 (0), 2 (1), 3 (0,0), 4 (0,1), 5 (1,0)
VOCAB = 6
SAMPLES = 20_000


def _tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def _empirical(counts: Counter) -> dict:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def _exact_first_two(tree: Tree, tokens: list[int], probs: torch.Tensor) -> dict:
    """P(first, second), second None when the first token is not a draft child of the root."""
    out = {}
    child_of_root = {}
    for kid in tree.children[0].tolist():
        if kid >= 0:
            child_of_root.setdefault(tokens[kid], kid)  # a repeated draft token is tried once
    for t in range(VOCAB):
        p_first = float(probs[0, t])
        if p_first == 0:
            continue
        if t in child_of_root:
            for u in range(VOCAB):
                p = p_first * float(probs[child_of_root[t], u])
                if p > 0:
                    out[(t, u)] = p
        else:
            out[(t, None)] = p_first
    return out


def _sample_first_two(tree: Tree, tokens: list[int], probs: torch.Tensor, n: int) -> Counter:
    token_t = torch.tensor(tokens)
    scores = torch.log(probs)  # log 0 = -inf: softmax gives the exact zeros back
    counts = Counter()
    for _ in range(n):
        decision = accept.accept_sampling(tree, token_t, scores)
        emitted = decision.tokens
        # The kept path must be the drafts that were emitted, and then the bonus.
        path = decision.path[: len(emitted)].tolist()
        assert [tokens[node] for node in path[1:]] == emitted[:-1]
        counts[(emitted[0], emitted[1] if len(emitted) > 1 else None)] += 1
    return counts


def _distributions(rows: list[list[float]]) -> torch.Tensor:
    probs = torch.tensor(rows, dtype=torch.float64)
    return (probs / probs.sum(-1, keepdim=True)).float()


CASES = {
    # Drafts the target likes and dislikes, every node a different distribution.
    "mixed": (
        [5, 1, 2, 3, 4, 0],
        [[0.30, 0.25, 0.05, 0.10, 0.10, 0.20],
         [0.10, 0.40, 0.10, 0.20, 0.10, 0.10],
         [0.05, 0.05, 0.50, 0.20, 0.10, 0.10],
         [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],
         [0.60, 0.10, 0.10, 0.10, 0.05, 0.05],
         [0.15, 0.15, 0.15, 0.15, 0.20, 0.20]],
    ),
    # Drafts with zero target probability: they must never be emitted.
    "zero_probability_drafts": (
        [0, 5, 4, 3, 2, 1],
        [[0.30, 0.30, 0.20, 0.20, 0.00, 0.00],  # root: drafts 5 and 4 are impossible
         [0.25, 0.25, 0.25, 0.25, 0.00, 0.00],
         [0.10, 0.20, 0.30, 0.40, 0.00, 0.00],
         [0.50, 0.50, 0.00, 0.00, 0.00, 0.00],
         [0.00, 0.00, 0.00, 1.00, 0.00, 0.00],
         [0.40, 0.30, 0.20, 0.00, 0.10, 0.00]],
    ),
    # Both root drafts are the same token; the duplicate must not count twice.
    "duplicate_drafts": (
        [0, 2, 2, 1, 3, 4],
        [[0.20, 0.20, 0.30, 0.10, 0.10, 0.10],
         [0.10, 0.10, 0.10, 0.10, 0.30, 0.30],
         [0.30, 0.20, 0.10, 0.20, 0.10, 0.10],
         [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],
         [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],
         [0.20, 0.20, 0.20, 0.20, 0.10, 0.10]],
    ),
}


def _sample_first_two_rows(tree: Tree, tokens: list[int], probs: torch.Tensor, n: int) -> Counter:
    """``_sample_first_two`` by the batched step's rule: n rows of the same tree, walked at once."""
    node, bonus = accept.sampled_nodes(tree, torch.tensor(tokens).repeat(n, 1), torch.log(probs).expand(n, -1, -1),
                                       _sampled_rows(n))
    counts = Counter()
    for last, b in zip(node.tolist(), bonus.tolist(), strict=True):
        emitted = [tokens[k] for k in tree.path_nodes[last].tolist()[1 : 1 + int(tree.depth[last])]] + [b]
        counts[(emitted[0], emitted[1] if len(emitted) > 1 else None)] += 1
    return counts


@pytest.mark.parametrize("rule", ["host", "batched"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_accept_sampling_emits_the_target_distribution(case, rule):
    """The host step's rule (``accept_sampling``) and the batched step's (``sampled_nodes``, every row at once on
    device tensors) both have the target's law."""
    tree = Tree.from_paths(PATHS)
    tokens, rows = CASES[case]
    probs = _distributions(rows)
    torch.manual_seed(1234)
    sample = _sample_first_two if rule == "host" else _sample_first_two_rows
    counts = sample(tree, tokens, probs, SAMPLES)
    exact = _exact_first_two(tree, tokens, probs)
    assert set(counts) <= set(exact), f"impossible outcomes emitted: {set(counts) - set(exact)}"
    assert _tv(_empirical(counts), exact) < 0.02
    first = Counter()
    for (t, _), c in counts.items():
        first[t] += c
    assert _tv(_empirical(first), {t: float(probs[0, t]) for t in range(VOCAB)}) < 0.02


def _sampled_rows(rows: int, temperature=1.0, top_p=1.0, top_k=-1) -> RowSampling:
    sampling = RowSampling.zeros(rows, "cpu")
    for row in range(rows):
        sampling.set(row, SamplingParams(temperature, top_p, top_k, 1.0))
    return sampling


def test_batched_processors_are_fastchats():
    """Each row's probabilities are those FastChat's logits processors give for that row's parameters."""
    from fastchat.serve.inference import prepare_logits_processor

    settings = [(0.7, 1.0, -1), (1.0, 0.9, -1), (0.8, 0.9, 20), (1.3, 1.0, 5), (0.5, 0.5, 50), (1.0, 0.999, 1),
                (2.0, 0.3, 0), (1.0, 1.0, 100_000)]
    torch.manual_seed(7)
    logits = torch.randn(len(settings), 300) * 3
    sampling = RowSampling.zeros(len(settings), "cpu")
    for row, (t, p, k) in enumerate(settings):
        sampling.set(row, SamplingParams(t, p, k, 1.0))
    ours = row_probs(logits, sampling)
    for row, (t, p, k) in enumerate(settings):
        theirs = torch.softmax(prepare_logits_processor(t, 1.0, p, k)(None, logits[row : row + 1].clone()), dim=-1)
        assert torch.equal(ours[row] > 0, theirs[0] > 0), f"row {row} keeps other tokens than FastChat"
        torch.testing.assert_close(ours[row], theirs[0], atol=1e-6, rtol=1e-5)


def test_accept_sampling_without_drafts_is_plain_sampling():
    tree = Tree.from_paths([])
    probs = _distributions([[0.1, 0.2, 0.3, 0.4, 0.0, 0.0]])
    torch.manual_seed(0)
    counts = Counter(accept.accept_sampling(tree, torch.tensor([0]), torch.log(probs)).tokens[0]
                     for _ in range(5000))
    assert _tv(_empirical(counts), {t: float(probs[0, t]) for t in range(VOCAB)}) < 0.03


# -- end to end ------------------------------------------------------------------

SAMPLING = {"temperature": 0.8, "top_p": 0.9, "top_k": 20}
RUNS = 1500
TOKENS = 3  # token 1 comes from the prefill, tokens 2-3 from one verification step
PROMPT = "The dog jumps"


@pytest.fixture(scope="module")
def sharp_models(tmp_path_factory, tokenizer_dir):
    """A base with peaked distributions (few likely outcomes, so few runs suffice) and
    heads copying its lm_head, so drafts are often accepted at temperature > 0 too."""
    root = str(tmp_path_factory.mktemp("sampling"))
    base_dir = tiny.build_llama(os.path.join(root, "vicuna-sharp"), tokenizer_dir, sharpen=20.0)
    ckpt = os.path.join(root, "medusa-vicuna-sharp")
    write_medusa_checkpoint(ckpt, tiny.oracle_medusa_heads(base_dir, 3), base_dir)
    return base_dir, ckpt


def _sample_prefixes(stream, model, tokenizer, runs: int, seed: int, extra=None) -> Counter:
    recorder = tiny.RecordingTokenizer(tokenizer)
    torch.manual_seed(seed)
    counts = Counter()
    for _ in range(runs):
        params = {"prompt": PROMPT, "max_new_tokens": TOKENS, "echo": False, **SAMPLING, **(extra or {})}
        list(stream(model, recorder, params, "cpu", CONTEXT))
        counts[_visible(recorder.last_ids[:TOKENS], tokenizer)] += 1
    return counts


def _visible(ids, tokenizer) -> tuple:
    """The ids a decode shows: our stream drops special ids (an unknown token, EOS) before its last decode, where
    FastChat's decode skips them, so the recorded ids are compared without them."""
    special = set(tokenizer.all_special_ids)
    return tuple(i for i in ids if i not in special)


@torch.inference_mode()
def _exact_prefixes(base, tokenizer) -> dict:
    """P(first TOKENS generated ids, special ids left out) under FastChat's own logits processors, by enumeration.

    A sequence that hits EOS ends there (FastChat stops on it), so its key is shorter.
    """
    from fastchat.serve.inference import prepare_logits_processor

    processor = prepare_logits_processor(SAMPLING["temperature"], 1.0, SAMPLING["top_p"], SAMPLING["top_k"])
    prompt = tokenizer(PROMPT).input_ids
    eos = tokenizer.eos_token_id
    open_prefixes, finished = {(): 1.0}, {}
    for _ in range(TOKENS):
        prefixes = list(open_prefixes)
        logits = base(input_ids=torch.tensor([prompt + list(p) for p in prefixes])).logits[:, -1, :]
        probs = torch.softmax(processor(None, logits), dim=-1)
        grown = {}
        for prefix, row in zip(prefixes, probs, strict=True):
            for t in torch.nonzero(row).flatten().tolist():
                p = open_prefixes[prefix] * float(row[t])
                (finished if t == eos else grown)[prefix + (t,)] = p
        open_prefixes = grown
    law = Counter()
    for ids, p in {**open_prefixes, **finished}.items():
        law[_visible(ids, tokenizer)] += p
    return dict(law)


def _coarse(dist: dict, keep: set) -> dict:
    """Lump rare outcomes into one bin: the TV of many tiny bins is mostly sampling noise."""
    out = Counter()
    for k, v in dist.items():
        out[k if k in keep else "other"] += v
    return dict(out)


@pytest.mark.parametrize("step", ["batched", "host"])
def test_sampled_tokens_match_fastchat_distribution(sharp_models, step, monkeypatch):
    """Sampled requests are served by the batched step; with it off (or with a repetition penalty, logprobs or
    typical acceptance) by a host step of their own. Both have FastChat's law."""
    if step == "host":
        monkeypatch.setenv(SAMPLED_STEP_ENV, "0")
    base_dir, ckpt = sharp_models
    base, base_tok = load_model(base_dir, device="cpu")
    model, tok = load_model(ckpt, device="cpu")
    ours = get_generate_stream_function(model, ckpt)
    assert ours.__module__ == "fastchat_spec.generate.stream"

    exact = _exact_prefixes(base, base_tok)
    assert abs(sum(exact.values()) - 1.0) < 1e-4
    keep = {k for k, p in exact.items() if p >= 0.01}
    assert len(keep) >= 5  # the test really samples: several likely outcomes

    stock = _empirical(_sample_prefixes(fastchat_generate_stream, base, base_tok, RUNS, seed=1))
    spec_counts = _sample_prefixes(ours, model, tok, RUNS, seed=2)
    spec = _empirical(spec_counts)
    assert set(spec) <= set(exact), "a sequence FastChat's sampler could never produce"

    # Sampling noise: E[TV] ~ 0.03 against the exact law, ~0.04 between two samples
    # (std ~ 0.008). Typical acceptance (lossy) lands near 0.08.
    exact_c = _coarse(exact, keep)
    assert _tv(_coarse(stock, keep), exact_c) < 0.06  # calibrates the bound on FastChat itself
    assert _tv(_coarse(spec, keep), exact_c) < 0.06
    assert _tv(_coarse(spec, keep), _coarse(stock, keep)) < 0.08


def test_drafts_are_accepted_while_sampling(sharp_models):
    """The comparison above is meaningful only if the speculative path accepts drafts."""
    _, ckpt = sharp_models
    model, tok = load_model(ckpt, device="cpu")
    stream = get_generate_stream_function(model, ckpt)
    torch.manual_seed(0)
    accepted = 0
    for _ in range(20):
        params = {"prompt": PROMPT, "max_new_tokens": 16, "echo": False, **SAMPLING}
        accepted += sum(list(stream(model, tok, params, "cpu", CONTEXT))[-1]["spec"]["accepted"])
    assert accepted > 20


def test_greedy_request_is_not_sampled(sharp_models):
    _, ckpt = sharp_models
    model, tok = load_model(ckpt, device="cpu")
    stream = get_generate_stream_function(model, ckpt)
    outs = {list(stream(model, tok, {"prompt": PROMPT, "max_new_tokens": 8, "echo": False,
                                     "temperature": 0.0}, "cpu", CONTEXT))[-1]["text"]
            for _ in range(5)}
    assert len(outs) == 1


def test_typical_acceptance_is_opt_in(sharp_models, monkeypatch):
    _, ckpt = sharp_models
    model, tok = load_model(ckpt, device="cpu")
    stream = get_generate_stream_function(model, ckpt)
    calls = Counter()
    for module, name in ((accept, "accept_sampling"), (accept, "accept_typical"), (batch_step, "sampled_nodes")):
        original = getattr(module, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)

    params = {"prompt": PROMPT, "max_new_tokens": 6, "echo": False, **SAMPLING}
    assert parse_request(dict(params), tok, CONTEXT).acceptance == "lossless"
    list(stream(model, tok, dict(params), "cpu", CONTEXT))
    assert calls["sampled_nodes"] > 0 and calls["accept_typical"] == 0

    calls.clear()
    list(stream(model, tok, {**params, "spec_acceptance": "typical"}, "cpu", CONTEXT))
    assert calls["accept_typical"] > 0 and calls["accept_sampling"] == 0 and calls["sampled_nodes"] == 0

    with pytest.raises(ValueError, match="acceptance"):
        list(stream(model, tok, {**params, "spec_acceptance": "sloppy"}, "cpu", CONTEXT))
