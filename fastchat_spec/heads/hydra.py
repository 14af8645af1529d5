"""Hydra and Hydra++ draft heads (Ankner et al. 2024, arXiv 2402.05109).

Hydra heads are *sequentially dependent*: head i (0-based) guesses the token
i + 2 places after the base's last hidden state h_t, and it sees the tokens
already chosen before it on its tree path. Its input is

    [h_t ; e(x_{t+1}) ; ... ; e(x_{t+i+1})]        ((i + 2) * H features)

where e is the base model's own (frozen, shared) input embedding and x_{t+1}
is the token the base chose from h_t (the tree root). The MLP is a first
residual block from (i + 2) * H down to H with a linear residual projection,
then ``num_layers - 1`` blocks x + SiLU(Wx + b), then the head's own lm_head.

Hydra++ (``hydra_head_arch = "prefix-mlp"``) first runs one extra decoder
layer (built from transformers' own classes for the base's architecture, with
its own KV cache) over the base hidden states; its output replaces h_t.

Module and attribute names follow the published checkpoints
(``hydra_lm_head.pt`` holds this module's state dict), including their
spelling ``prefix_embeding_layer`` and the dropout slots that the prefix-mlp
layout has inside its ``nn.Sequential``s, so a published file loads as it is.
The published files also carry copies of the base embeddings
(``input_embed_fn.weight``, ``prefix_embeding_layer.embed_tokens.weight``);
we never store them and use the base's own embedding instead. The published
code builds the blocks after a head's first one from a single repeated module,
so its files hold one tensor under several keys; we load those into
independent blocks (the same function) and train independent blocks.
"""
from __future__ import annotations

import copy
import importlib

import torch
from torch import nn

from fastchat_spec.heads.medusa import ResBlock

ARCHS = ("mlp", "prefix-mlp")
# Tensors of the published files that duplicate the base embeddings: not ours to keep.
BASE_COPIES = ("input_embed_fn.weight", "prefix_embeding_layer.embed_tokens.weight")


class WideResBlock(nn.Module):
    """x (in_features) -> res_connection(x) + SiLU(Wx + b), with out size ``hidden_size``."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(in_features, hidden_size)
        self.res_connection = nn.Linear(in_features, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        # Start by passing the hidden-state part through unchanged, so a fresh
        # head begins where a fresh Medusa head does (the identity on h_t).
        with torch.no_grad():
            self.res_connection.weight.zero_()
            self.res_connection.weight[:, :hidden_size].copy_(torch.eye(hidden_size))
            self.res_connection.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_connection(x) + nn.functional.silu(self.linear(x))


def decoder_classes(config):
    """transformers' own decoder layer, RMSNorm and rotary classes for ``config``'s architecture."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        model_cls = MODEL_MAPPING[type(config)]
    except KeyError:
        raise NotImplementedError(
            f"Hydra++ builds its prefix layer from transformers' classes, which has no base model for "
            f"model_type {config.model_type!r}; use hydra_head_arch='mlp' with this base") from None
    module = importlib.import_module(model_cls.__module__)
    stem = model_cls.__name__[: -len("Model")]
    names = (f"{stem}DecoderLayer", f"{stem}RMSNorm", f"{stem}RotaryEmbedding")
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise NotImplementedError(
            f"Hydra++'s prefix layer needs {', '.join(missing)} in {module.__name__} (Llama-style bases: "
            f"Llama, Mistral, Qwen2); use hydra_head_arch='mlp' with model_type {config.model_type!r}")
    return tuple(getattr(module, n) for n in names)


class PrefixLayer(nn.Module):
    """Hydra++'s extra decoder layer over the base hidden states, then a final norm."""

    def __init__(self, base_config):
        super().__init__()
        config = copy.deepcopy(base_config.get_text_config(decoder=True)
                               if hasattr(base_config, "get_text_config") else base_config)
        config.num_hidden_layers = 1
        # SDPA takes both our explicit 4D masks (generation) and none at all (causal training).
        config._attn_implementation = "sdpa"
        layer_cls, norm_cls, rotary_cls = decoder_classes(config)
        self.config = config
        self.layers = nn.ModuleList([layer_cls(config, layer_idx=0)])
        self.norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = rotary_cls(config=config)
        self._init_near_identity(getattr(config, "initializer_range", 0.02))

    def _init_near_identity(self, std: float) -> None:
        """transformers' normal init, with the residual branches' output projections at zero.

        A fresh layer then passes the base hidden states through its residual
        stream (up to the final norm), so a fresh Hydra++ head starts where a
        fresh Hydra head does and the layer learns what to add.
        """
        for name, module in self.layers.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                if name.endswith(("o_proj", "down_proj")):
                    nn.init.zeros_(module.weight)

    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, cache=None,
                cache_position: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H) base hidden states at ``position_ids`` (B, T) -> (B, T, H).

        With ``cache`` (a one-layer ``Cache`` that the caller owns), keys and
        values are written at ``cache_position`` and ``attention_mask`` says
        what each row sees; without it the layer is causal over the block.
        """
        position_embeddings = self.rotary_emb(hidden, position_ids)
        out = self.layers[0](
            hidden, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
            use_cache=cache is not None, cache_position=cache_position, position_embeddings=position_embeddings,
        )
        out = out[0] if isinstance(out, tuple) else out
        return self.norm(out)


class HydraHeads(nn.Module):
    def __init__(self, base_config, num_heads: int, num_layers: int = 1, arch: str = "mlp",
                 grounded: bool = True, dropout: float = 0.0):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"hydra_num_heads must be >= 1, got {num_heads}")
        if num_layers < 1:
            raise ValueError(f"hydra_num_layers must be >= 1, got {num_layers}")
        if arch not in ARCHS:
            raise NotImplementedError(
                f"hydra_head_arch={arch!r} is not supported; use one of {ARCHS} "
                "(the published cross-attn and eagle-attn heads are research variants)")
        hidden, vocab = base_config.hidden_size, base_config.vocab_size
        self.arch, self.grounded = arch, grounded
        self.hidden_size, self.vocab_size = hidden, vocab
        # The prefix-mlp layout has a dropout before each block and before the lm_head.
        slot = (lambda m: [nn.Dropout(dropout), m]) if arch == "prefix-mlp" else (lambda m: [m])
        self.hydra_mlp = nn.ModuleList()
        self.hydra_lm_head = nn.ModuleList()
        for i in range(num_heads):
            first = WideResBlock(hidden * (i + 2), hidden) if grounded else ResBlock(hidden)
            blocks = slot(first)
            for _ in range(num_layers - 1):
                blocks += slot(ResBlock(hidden))
            self.hydra_mlp.append(nn.Sequential(*blocks))
            lm_head = nn.Linear(hidden, vocab)
            nn.init.zeros_(lm_head.bias)
            self.hydra_lm_head.append(nn.Sequential(*slot(lm_head)) if arch == "prefix-mlp" else lm_head)
        self.prefix_embeding_layer = PrefixLayer(base_config) if arch == "prefix-mlp" else None

    # -- shape -------------------------------------------------------------
    @property
    def num_heads(self) -> int:
        return len(self.hydra_mlp)

    @property
    def num_layers(self) -> int:
        return sum(isinstance(m, (ResBlock, WideResBlock)) for m in self.hydra_mlp[0])

    @property
    def has_prefix(self) -> bool:
        return self.prefix_embeding_layer is not None

    def _lm_head(self, i: int) -> nn.Linear:
        head = self.hydra_lm_head[i]
        return head[-1] if isinstance(head, nn.Sequential) else head

    def init_lm_heads_from(self, lm_head: nn.Module) -> None:
        """Each head's lm_head starts as a copy of the base lm_head (the papers' recipe)."""
        for i in range(self.num_heads):
            self._lm_head(i).weight.data.copy_(lm_head.weight.data)

    # -- one head ----------------------------------------------------------
    def head(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head i on inputs (..., (i + 2) * H) (or (..., H) ungrounded) -> (logits (..., V), hidden (..., H))."""
        hidden = self.hydra_mlp[i](x)
        return self.hydra_lm_head[i](hidden), hidden

    # -- training: teacher-forced inputs -----------------------------------
    def feature(self, base_hidden: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The heads' input feature over whole sequences (B, T, H): Hydra++'s prefix layer, else the input."""
        if not self.has_prefix:
            return base_hidden
        b, t, _ = base_hidden.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=base_hidden.device).expand(b, t)
        return self.prefix_embeding_layer(base_hidden, position_ids)

    def teacher_forced_input(self, i: int, feature: torch.Tensor, input_embeds: torch.Tensor,
                             rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Head i's inputs at positions (rows, cols) of a batch, with the true tokens as its path.

        ``feature`` and ``input_embeds`` are (B, T, H); at position t the path is
        the tokens t+1 .. t+i+1, so every ``cols + i + 1`` must be < T (true for
        any position whose target t+i+2 exists). Returns (N, (i + 2) * H), or
        (N, H) for ungrounded heads.
        """
        x = feature[rows, cols]
        if not self.grounded:
            return x
        path = [input_embeds[rows, cols + k].to(x.dtype) for k in range(1, i + 2)]
        return torch.cat([x] + path, dim=-1)
