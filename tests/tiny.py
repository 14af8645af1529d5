"""Tiny models built inside the tests: a SentencePiece Llama tokenizer and random Llamas.

Everything is small enough to build in a few seconds on 2 CPU cores. Folders
are named like Vicuna so that FastChat picks the vicuna_v1.1 template.

``CONTEXT`` and ``PROMPTS`` are what every test decodes with; ``TINY_CHECKPOINTS``
holds, per method of ``fastchat_spec/methods.py``, the tiny checkpoints the
exactness test (``tests/test_exactness.py``) writes with the method's own writer.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Callable

import torch

CONTEXT = 1024  # the context length FastChat's worker would pass for the tiny bases
MAX_NEW = 40  # tokens per greedy answer in the exactness checks
# Short and long, one-token, digits (byte-fallback pieces), non-ASCII: the first eight cover every kind.
PROMPTS = [
    "The cat runs over the house.", "Why is the river fast?", "Write a poem about fire.",
    "Hello world, how are you?", "A", "Numbers: 12345 and 678.", "Üñïçødé text — with symbols ✓",
    "Please write a story about a computer.", "Explain python code.", "List three birds.", "What is a token?",
    "The dog jumps into the water because", "Thank you! Can you explain the model?", "Where is the stone tree?",
    "One two three", "How could the bird fly under the river?", "Speed token fast answer", "Who was the model?",
    "Tell me about the house and the tree.", "Is the code slow or fast?",
    "Which question should we answer when the fire is quick?", "We were in the house then the dog ran.",
]

WORDS = ("the a an cat dog bird runs jumps flies quickly slowly over under into house tree river "
         "water fire stone computer code python model speed token fast answer question hello world "
         "please thank you what why how is are was were will can could should would be have has "
         "write explain list story poem about because then when where which who one two three").split()


def corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    return lines


def build_tokenizer(out_dir: str, vocab_size: int = 320) -> str:
    """Train a byte-fallback BPE SentencePiece model and save it as a LlamaTokenizer."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    os.makedirs(out_dir, exist_ok=True)
    text_file = os.path.join(out_dir, "corpus.txt")
    with open(text_file, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus()))
    prefix = os.path.join(out_dir, "spm")
    spm.SentencePieceTrainer.train(
        input=text_file, model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    tok = LlamaTokenizer(prefix + ".model", legacy=False)
    tok.save_pretrained(out_dir)
    os.remove(text_file)
    return out_dir


def build_llama(out_dir: str, tokenizer_dir: str, seed: int = 0, hidden: int = 64, layers: int = 2,
                dtype=torch.float32, sharpen: float = 4.0) -> str:
    """A random Llama saved as an HF folder with the tokenizer next to it.

    ``sharpen`` scales the output layer so next-token distributions are peaked:
    greedy choices then have clear margins, as a trained model's do.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    model.to(dtype).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def random_medusa_heads(base_dir: str, num_heads: int, num_layers: int = 1, own_lm_head: bool = True,
                        seed: int = 1, std: float = 0.05):
    from transformers import AutoConfig

    from fastchat_spec.heads.medusa import MedusaHeads

    cfg = AutoConfig.from_pretrained(base_dir)
    torch.manual_seed(seed)
    heads = MedusaHeads(cfg.hidden_size, cfg.vocab_size, num_heads, num_layers, own_lm_head=own_lm_head)
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, std)
    return heads


def published_medusa_tensors(hidden: int, vocab: int, heads: int = 3, layers: int = 1, own_lm_head: bool = True,
                             seed: int = 0) -> dict:
    """Raw Medusa head tensors keyed as the published files key them: ``{h}.{j}.linear.*``, ``{h}.{layers}.weight``.

    Tests that check the loader against the format write these by hand rather than through our writer.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for h in range(heads):
        for j in range(layers):
            state[f"{h}.{j}.linear.weight"] = torch.randn(hidden, hidden, generator=g) * 0.05
            state[f"{h}.{j}.linear.bias"] = torch.randn(hidden, generator=g) * 0.05
        if own_lm_head:
            state[f"{h}.{layers}.weight"] = torch.randn(vocab, hidden, generator=g) * 0.05
    return state


def oracle_medusa_heads(base_dir: str, num_heads: int, noise: float = 0.0, seed: int = 0):
    """Heads that copy the base lm_head: head k guesses the base's next token again.

    Useful for acceptance > 1 on repetitive text without any training;
    ``noise`` nudges every weight so that drafts are sometimes wrong.
    """
    from transformers import AutoModelForCausalLM

    from fastchat_spec.heads.medusa import MedusaHeads

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = base.config
    heads = MedusaHeads(cfg.hidden_size, cfg.vocab_size, num_heads, 1, own_lm_head=True)
    heads.init_lm_heads_from(base.lm_head)
    torch.manual_seed(seed)
    return _nudged(heads, noise)


def oracle_hydra_heads(base, num_heads: int, arch: str, num_layers: int = 2, seed: int = 0,
                       noise: float = 0.02, grounded: bool = True):
    """Fresh Hydra heads (each guesses the base's next token again), every weight nudged.

    The nudge makes every input matter (the path embeddings, and the prefix
    layer's attention over the whole history) while drafts stay often right,
    so steps accept several tokens.
    """
    from fastchat_spec.heads.hydra import HydraHeads

    torch.manual_seed(seed)
    heads = HydraHeads(base.config, num_heads, num_layers, arch=arch, grounded=grounded)
    heads.init_lm_heads_from(base.get_output_embeddings())
    return _nudged(heads, noise)


def random_chimera_drafter(base, num_heads: int, seed: int = 0, noise: float = 0.05, head_arch: str = "residual"):
    """A fresh Chimera drafter (heads at the lm_head) with every weight nudged, so nothing is an identity."""
    from fastchat_spec.heads.chimera import new_drafter_for

    torch.manual_seed(seed)
    return _nudged(new_drafter_for(base, num_heads, head_arch=head_arch), noise)


def trigram_chimera_drafter(base, num_heads: int, seed: int = 0):
    """Heads of the Chimera authors' architecture (reading the encoder output alone) whose drafts land untrained.

    The trigram encoder sums the three embeddings (scaled above the encoder's
    noise) and the heads score tokens by their embedding, so a head's top 3
    are the trigram's own tokens: the continuations of a loop of period <= 3,
    which the tiny base falls into.
    """
    drafter = random_chimera_drafter(base, num_heads, seed, head_arch="published")
    embed = base.get_input_embeddings().weight.detach()
    with torch.no_grad():
        drafter.trimlp[1].weight.copy_(torch.cat([torch.eye(embed.shape[1])] * 3, dim=1) / embed.std())
        for head in drafter.chimera_head:
            head[-1].weight.copy_(embed)
    return drafter


def _nudged(module: torch.nn.Module, noise: float) -> torch.nn.Module:
    """``module`` with every weight moved by N(0, noise) from the current random state, in eval mode."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * noise)
    return module.eval()


# --------------------------------------------------------------------------- one tiny checkpoint per case
@dataclass(frozen=True)
class TinyCheckpoint:
    """A tiny checkpoint of one method, written by the method's registered writer."""

    name: str
    write: Callable  # (writer, out_dir, base_dir, base) -> the checkpoint folder
    request: dict = field(default_factory=dict)  # extra request keys (a Jacobi window)
    multi_token: bool = True  # its drafts land often enough that tokens per step must exceed 1


def _medusa(num_heads: int, tree=None, noise: float = 0.0) -> Callable:
    def write(writer, out, base_dir, base):
        return writer(out, oracle_medusa_heads(base_dir, num_heads, noise, seed=num_heads), base_dir, tree=tree)
    return write


def _hydra(num_heads: int, arch: str, tree=None, grounded: bool = True) -> Callable:
    def write(writer, out, base_dir, base):
        heads = oracle_hydra_heads(base, num_heads, arch, grounded=grounded)
        return writer(out, heads, base_dir, tree=tree)
    return write


def _chimera(num_heads: int, head_arch: str, tree=None) -> Callable:
    def write(writer, out, base_dir, base):
        if head_arch == "published":
            drafter = trigram_chimera_drafter(base, num_heads, seed=num_heads)
        else:
            drafter = random_chimera_drafter(base, num_heads, seed=num_heads)
        return writer(out, drafter, base_dir, tree=tree)
    return write


def _cllm(window: int) -> Callable:
    def write(writer, out, base_dir, base):
        from transformers import AutoTokenizer

        return writer(out, base, AutoTokenizer.from_pretrained(base_dir, use_fast=False), window)
    return write


CHAIN3 = [[0], [0, 0], [0, 0, 0]]
TINY_CHECKPOINTS: dict[str, list[TinyCheckpoint]] = {
    # one to five heads; a chain, a narrow custom tree, the default trees, a wide 15-node tree
    "medusa": [
        TinyCheckpoint("1-head", _medusa(1)),
        TinyCheckpoint("2-heads-narrow-tree", _medusa(2, [[0], [1], [0, 0]], noise=0.02)),
        TinyCheckpoint("3-heads-chain", _medusa(3, CHAIN3)),
        TinyCheckpoint("5-heads-wide-tree", _medusa(5, noise=0.02)),
    ],
    # Hydra (mlp) with a custom tree, Hydra++ (prefix-mlp), Medusa-like ungrounded heads
    "hydra": [
        TinyCheckpoint("mlp-3-heads-tree", _hydra(3, "mlp", [[0], [1], [0, 0], [1, 0], [1, 1]])),
        TinyCheckpoint("prefix-mlp-4-heads", _hydra(4, "prefix-mlp")),
        TinyCheckpoint("mlp-2-ungrounded", _hydra(2, "mlp", grounded=False)),
    ],
    # our heads ([h_t; F]) and the authors' (F alone), default trees and a custom one
    "chimera": [
        TinyCheckpoint("residual-3-heads", _chimera(3, "residual")),
        TinyCheckpoint("published-3-heads", _chimera(3, "published")),
        TinyCheckpoint("residual-2-heads-tree", _chimera(2, "residual", [[0], [1], [0, 0], [1, 0], [0, 1]])),
    ],
    # the checkpoint's window, then a request's (FastChat main's key); a window of 1 is plain decoding
    "cllm": [
        TinyCheckpoint("window-4", _cllm(4)),
        TinyCheckpoint("request-window-7", _cllm(4), {"n_token_seq_length": 7}),
        TinyCheckpoint("request-window-1", _cllm(4), {"n_token_seq_length": 1}, multi_token=False),
    ],
}


# --------------------------------------------------------------------------- FastChat's reference text
def greedy(prompt: str, max_new_tokens: int = MAX_NEW, **extra) -> dict:
    """A greedy request as FastChat's workers receive it."""
    return {"prompt": prompt, "temperature": 0.0, "max_new_tokens": max_new_tokens, "echo": False, **extra}


class StockTexts:
    """FastChat's own answers (its generate_stream on the plain base), computed on first use and kept.

    ``stock[prompt]`` is the greedy text of ``MAX_NEW`` tokens;
    ``stock.text(prompt, max_new_tokens, **request)`` another request's text,
    ``stock.last(...)`` its whole last chunk (usage, finish_reason).
    """

    def __init__(self, base_dir: str):
        self.base_dir = base_dir
        self._model = None
        self._chunks: dict = {}

    def last(self, prompt: str, max_new_tokens: int = MAX_NEW, **extra) -> dict:
        key = (prompt, max_new_tokens, repr(sorted(extra.items())))
        if key not in self._chunks:
            from fastchat.model.model_adapter import load_model
            from fastchat.serve.inference import generate_stream

            if self._model is None:
                self._model = load_model(self.base_dir, device="cpu")
            model, tok = self._model
            params = greedy(prompt, max_new_tokens, **extra)
            self._chunks[key] = list(generate_stream(model, tok, params, "cpu", CONTEXT))[-1]
        return self._chunks[key]

    def text(self, prompt: str, max_new_tokens: int = MAX_NEW, **extra) -> str:
        return self.last(prompt, max_new_tokens, **extra)["text"]

    def __getitem__(self, prompt: str) -> str:
        return self.text(prompt)


def stream_greedy(stream, model, tok, prompts, expected, max_new_tokens: int = MAX_NEW, **extra) -> tuple:
    """Our greedy answer to every prompt equals ``expected[prompt]`` (FastChat's); (steps, tokens) summed."""
    steps = tokens = 0
    for prompt in prompts:
        last = list(stream(model, tok, greedy(prompt, max_new_tokens, **extra), "cpu", CONTEXT))[-1]
        assert last["text"] == expected[prompt], prompt
        steps, tokens = steps + last["spec"]["steps"], tokens + last["spec"]["tokens"]
    return steps, tokens


class RecordingTokenizer:
    """A tokenizer that remembers the ids of its last decode (decoded text is lossy on byte tokens)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.last_ids: list[int] = []

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)

    def decode(self, ids, **kwargs):
        self.last_ids = list(ids)
        return self._tokenizer.decode(ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)
