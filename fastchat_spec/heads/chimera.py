"""Chimera's draft model (Zeng et al. 2024, arXiv 2402.15758).

Three parts, named as in the published checkpoints:

* ``trimlp``, the trigram encoder: the base's (frozen, shared, never saved)
  input embeddings of tokens t-2, t-1 and t are concatenated (3H), passed
  through one residual block on 3H and projected to H. It captures the
  short-range dependencies the paper puts at the bottom of the draft model.
  Before the start of a sequence the missing tokens are zero vectors (a
  trigram at position 0 is ``[0; 0; e(x_0)]``): a zero embedding carries no
  token, whereas repeating the first token would invent a bigram.
* ``fast_layer1``, the full-context encoder: one freshly initialised decoder
  layer of the base's own class (e.g. ``LlamaDecoderLayer``), run with the
  base's rotary embedding. It fuses all tokens through one sequence with two
  kinds of slots: positions the base has already run enter as the base's last
  hidden states (the "readily available representations of the original LLM",
  which already summarise everything before them), and positions the base has
  not seen yet (the token just chosen and the draft tokens) enter as their
  trigram features. The encoder output at an unseen position is its estimate
  of the base's hidden state there. We put the two in one sequence rather than
  summing them per position because at the positions the drafter must fill
  there is no base hidden state to add to.
* ``chimera_head``, the decoding heads. Head k guesses token t+k+1 from
  ``F_{t+k}``, the encoder output at the position whose next token it guesses;
  its input depends on the token chosen by head k-1 through that position's
  trigram, so the heads run one after the other along a tree path. Two head
  architectures (``HEAD_ARCHS``, the checkpoint's ``chimera_head_arch``):

  - ``"residual"`` (ours, the default; the paper's residual decoding heads):
    head k reads ``[h_t; F_{t+k}]``, the base's last hidden state at the last
    position it ran (the residual path to the original LLM) and the encoder
    output, through ``num_layers`` residual blocks on 2H and a
    Linear(2H -> V) initialised as ``[W_lm, W_lm]``.
  - ``"published"`` (the architecture of the Chimera authors' released
    weights): head k reads only ``F_{t+k}``, through ``num_layers`` residual
    blocks on H and a Linear(H -> V) initialised as ``W_lm``, i.e. the
    encoder output is treated as the base's hidden state and decoded like it.

No generation state lives here: the encoder's KV cache belongs to the proposer
(``fastchat_spec/generate/proposers/chimera.py``), one per generation.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from fastchat_spec.heads.medusa import ResBlock

PAD_ID = -1  # a token id meaning "before the start": its embedding is the zero vector
HEAD_ARCHS = ("residual", "published")  # what a head reads: [h_t; F] (ours) or F alone (the authors' weights)


def trigram_ids(ids: torch.Tensor) -> torch.Tensor:
    """(..., T) token ids -> (..., T, 3) ids of tokens t-2, t-1, t, with ``PAD_ID`` before the start."""
    pad = torch.full_like(ids[..., :1], PAD_ID)
    prev1 = torch.cat([pad, ids[..., :-1]], dim=-1)
    prev2 = torch.cat([pad, prev1[..., :-1]], dim=-1)
    return torch.stack([prev2, prev1, ids], dim=-1)


def embed_padded(embed: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Embeddings of ``ids`` with ``PAD_ID`` mapped to zero vectors."""
    vectors = embed(ids.clamp_min(0))
    return vectors * (ids >= 0).unsqueeze(-1).to(vectors.dtype)


def encoder_config(base_config, num_layers: int = 1):
    """The base's config for a stand-alone stack of ``num_layers`` decoder layers.

    SDPA attention is forced: the encoder takes explicit masks (float at
    inference, boolean in training) and SDPA accepts both.
    """
    config = base_config.get_text_config() if hasattr(base_config, "get_text_config") else base_config
    config = copy.deepcopy(config)
    config.num_hidden_layers = num_layers
    config._attn_implementation = "sdpa"
    return config


def decoder_layer_class(base) -> type:
    """The class of the base's own decoder layers (LlamaDecoderLayer, MistralDecoderLayer, ...)."""
    layers = getattr(base.get_decoder(), "layers", None)
    if not layers:
        raise ValueError(f"{type(base).__name__} has no decoder layers list; Chimera needs a decoder-only "
                         "Hugging Face model with model.layers (Llama, Mistral, Qwen2, ...)")
    return type(layers[0])


class ChimeraDrafter(nn.Module):
    def __init__(self, base_config, num_heads: int, num_layers: int = 1, encoder_layers: int = 1,
                 layer_class: type | None = None, head_arch: str = "residual"):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"chimera_num_heads must be >= 1, got {num_heads}")
        if head_arch not in HEAD_ARCHS:
            raise ValueError(f"chimera_head_arch={head_arch!r} is not a Chimera head architecture; use one of "
                             f"{HEAD_ARCHS}")
        if encoder_layers < 1:
            raise ValueError(f"the full-context encoder needs >= 1 layer, got {encoder_layers}")
        if layer_class is None:
            from transformers.models.llama.modeling_llama import LlamaDecoderLayer

            layer_class = LlamaDecoderLayer
        self.encoder_config = encoder_config(base_config, encoder_layers)
        h, vocab = self.encoder_config.hidden_size, self.encoder_config.vocab_size
        self.hidden_size, self.vocab_size, self.num_layers, self.head_arch = h, vocab, num_layers, head_arch
        self.trimlp = nn.Sequential(ResBlock(3 * h), nn.Linear(3 * h, h, bias=False))
        self.fast_layer1 = nn.ModuleList(layer_class(self.encoder_config, layer_idx=i) for i in range(encoder_layers))
        self._init_encoder()
        width = self.head_width
        self.chimera_head = nn.ModuleList(
            nn.Sequential(*[ResBlock(width) for _ in range(num_layers)], nn.Linear(width, vocab, bias=False))
            for _ in range(num_heads))

    @property
    def num_heads(self) -> int:
        return len(self.chimera_head)

    @property
    def head_width(self) -> int:
        """Width of a head's input: 2H for ``[h_t; F]``, H for ``F`` alone."""
        return 2 * self.hidden_size if self.head_arch == "residual" else self.hidden_size

    def _init_encoder(self) -> None:
        """A fresh layer, initialised the way Hugging Face initialises the base's own."""
        std = getattr(self.encoder_config, "initializer_range", 0.02)
        for module in self.fast_layer1.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def init_heads_from(self, lm_head: nn.Module) -> None:
        """Every head starts as the base's lm_head: ``[W_lm, W_lm]`` on ``[h_t; F]``, ``W_lm`` on ``F``."""
        weight = lm_head.weight.data
        start = torch.cat([weight, weight], dim=1) if self.head_arch == "residual" else weight
        for head in self.chimera_head:
            head[-1].weight.data.copy_(start)

    # -- the three parts ---------------------------------------------------
    def trigram(self, embed: nn.Module, tri_ids: torch.Tensor) -> torch.Tensor:
        """(..., 3) trigram token ids -> (..., H) trigram features."""
        vectors = embed_padded(embed, tri_ids)  # (..., 3, H)
        vectors = vectors.flatten(-2).to(self.trimlp[-1].weight.dtype)
        return self.trimlp(vectors)

    def encode(self, x: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor, rotary: nn.Module,
               cache=None, cache_position: torch.Tensor | None = None) -> torch.Tensor:
        """The full-context encoder over (B, T, H) inputs.

        ``mask`` is 4D, additive float or boolean (True = may attend); with a
        ``cache`` (from ``kv_cache.new_cache(self.encoder_config, ...)``) the
        keys/values are written at ``cache_position`` and the mask spans the cache.
        """
        position_embeddings = rotary(x, position_ids)
        for layer in self.fast_layer1:
            x = layer(x, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                      use_cache=cache is not None, cache_position=cache_position,
                      position_embeddings=position_embeddings)
        return x

    def head(self, k: int, base_hidden: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        """Logits of head ``k`` (0-based) from ``h_t`` and ``F`` (both (..., H)) -> (..., V).

        Published heads ignore ``base_hidden``; both variants take it so that
        the proposer and the trainer call every head the same way.
        """
        if self.head_arch == "published":
            return self.chimera_head[k](encoded)
        return self.chimera_head[k](torch.cat([base_hidden.to(encoded.dtype), encoded], dim=-1))

    # -- training: every position at once --------------------------------------
    def teacher_forced_logits(self, k: int, embed: nn.Module, rotary: nn.Module, input_ids: torch.Tensor,
                              hidden: torch.Tensor) -> torch.Tensor:
        """Head ``k`` (0-based) at every anchor of a known sequence, as drafting would compute it.

        ``input_ids`` (B, T) and the base's last hidden states ``hidden``
        (B, T, H). At anchor t the base has run positions 0..t; the encoder
        then sees their hidden states and the trigram features of positions
        t+1..t+k+1 (the root and k draft tokens, here the true ones), and head
        ``k`` guesses token t+k+2. Returns (B, T-k-2, V) logits for anchors
        0..T-k-3, aligned with ``input_ids[:, k+2:]``.
        """
        t_len, offset = input_ids.shape[1], k + 1
        features = self.trigram(embed, trigram_ids(input_ids))  # (B, T, H)
        x = torch.cat([hidden.to(features.dtype), features], dim=1)  # (B, 2T, H): base slots, then trigram slots
        positions = torch.arange(t_len, device=input_ids.device).repeat(2).view(1, -1)
        mask = two_stream_mask(t_len, offset, input_ids.device).view(1, 1, 2 * t_len, 2 * t_len)
        encoded = self.encode(x, positions, mask, rotary)[:, t_len:]  # (B, T, H) at the trigram slots
        anchors = t_len - offset - 1
        return self.head(k, hidden[:, :anchors], encoded[:, offset:offset + anchors])

    # -- checkpoint parts -----------------------------------------------------
    def part_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """The state dicts saved as ``trimlp``, ``fast_layer1`` and ``chimera_head``."""
        return {name: getattr(self, name).state_dict() for name in PARTS}


PARTS = ("trimlp", "fast_layer1", "chimera_head")


def two_stream_mask(length: int, offset: int, device) -> torch.Tensor:
    """Boolean (2T, 2T) visibility for ``teacher_forced_logits`` (True: may attend).

    Slots 0..T-1 hold the base's hidden states (causal among themselves);
    slot T+j holds position j's trigram features, read as if the base had run
    positions 0..j-offset only: it sees those hidden states and the trigram
    slots j-offset+1..j, like a draft node sees the committed cache and its
    tree path.
    """
    i = torch.arange(length, device=device)
    causal = i.view(-1, 1) >= i.view(1, -1)
    hidden_part = i.view(-1, 1) - offset >= i.view(1, -1)
    draft_part = causal & (i.view(-1, 1) - offset < i.view(1, -1))
    top = torch.cat([causal, torch.zeros_like(causal)], dim=1)
    bottom = torch.cat([hidden_part, draft_part], dim=1)
    return torch.cat([top, bottom], dim=0)


def new_drafter_for(base, num_heads: int, num_layers: int = 1, encoder_layers: int = 1,
                    head_arch: str = "residual") -> ChimeraDrafter:
    """A freshly initialised drafter for ``base``: its layer class, heads started from its lm_head."""
    drafter = ChimeraDrafter(base.config, num_heads, num_layers, encoder_layers, decoder_layer_class(base),
                             head_arch)
    drafter.init_heads_from(base.get_output_embeddings())
    return drafter
