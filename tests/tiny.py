"""Tiny models built inside the tests: a SentencePiece Llama tokenizer and random Llamas.

Everything is small enough to build in a few seconds on 2 CPU cores. Folders
are named like Vicuna so that FastChat picks the vicuna_v1.1 template.
"""
from __future__ import annotations

import os
import random

import torch

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


def oracle_medusa_heads(base_dir: str, num_heads: int):
    """Heads that copy the base lm_head: head k guesses the base's next token again.

    Useful for acceptance > 1 on repetitive text without any training.
    """
    from transformers import AutoModelForCausalLM

    from fastchat_spec.heads.medusa import MedusaHeads

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = base.config
    heads = MedusaHeads(cfg.hidden_size, cfg.vocab_size, num_heads, 1, own_lm_head=True)
    heads.init_lm_heads_from(base.lm_head)
    return heads


def stock_greedy_texts(base_dir: str, prompts, max_new_tokens: int, context: int) -> dict:
    """FastChat's own greedy answer (its generate_stream on the plain base) for every prompt."""
    from fastchat.model.model_adapter import load_model
    from fastchat.serve.inference import generate_stream

    model, tok = load_model(base_dir, device="cpu")
    outs = {}
    for prompt in prompts:
        params = {"prompt": prompt, "temperature": 0.0, "max_new_tokens": max_new_tokens, "echo": False}
        outs[prompt] = list(generate_stream(model, tok, params, "cpu", context))[-1]["text"]
    return outs


def stream_greedy(stream, model, tok, prompts, expected: dict, max_new_tokens: int, context: int) -> tuple:
    """Our greedy answer to every prompt equals ``expected[prompt]`` (FastChat's); (steps, tokens) summed."""
    steps = tokens = 0
    for prompt in prompts:
        params = {"prompt": prompt, "temperature": 0.0, "max_new_tokens": max_new_tokens, "echo": False}
        last = list(stream(model, tok, params, "cpu", context))[-1]
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
