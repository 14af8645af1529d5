"""Train Chimera's draft model (Zeng et al. 2024, arXiv 2402.15758) on a frozen base.

The base is frozen and shared: its input embeddings feed the trigram encoder,
its last hidden states feed the full-context encoder and the heads, and its
rotary embedding positions the encoder. Trained: ``trimlp`` (trigram encoder),
``fast_layer1`` (full-context encoder, a fresh decoder layer) and
``chimera_head`` (residual heads, started at ``[W_lm, W_lm]``); see
``fastchat_spec/heads/chimera.py``.

Every head learns at every position in one pass, teacher-forced exactly as it
drafts: head k (0-based) at anchor t sees the base's hidden states up to t and
the trigram features of the true tokens t+1..t+k+1, and guesses token t+k+2
(the same offsets as Medusa's head k). Its loss is the cross-entropy on the
data plus, as in the paper's distillation objective, ``--distill_weight`` times
KL(base || head) against the base's own next-token distribution at t+k+1 (what
verification will compare the draft with); heads are weighted
``decay^k`` (``--chimera_decay_coefficient``).

``--chimera_head_arch`` picks what the heads read: ``residual`` (ours, the
default) reads ``[h_t; F]``, the base's last hidden state and the encoder
output; ``published`` reads the encoder output alone, the architecture of the
Chimera authors' released weights. Both learn with the same objective.

Writes the published layout: config.json (``chimera_num_heads``,
``chimera_num_layers``, ``chimera_head_arch``, ``base_model_name_or_path``,
``chimera_choices`` grown from held-out accuracy) with ``trimlp.pt``,
``fast_layer1.pt`` and ``chimera_head.pt`` (or ``.safetensors`` with
``--chimera_safetensors``).

Flag names follow the Chimera authors' script; every HF TrainingArguments flag
works too. Example (one GPU)::

    torchrun --nproc_per_node=1 -m fastchat_spec.train.chimera --model_name_or_path BASE \\
        --data_path train.json --eval_data_path heldout.json --output_dir chimera-BASE \\
        --chimera_num_heads 4 --chimera_num_layers 1 --num_train_epochs 1 [--chimera_head_arch published]
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from fastchat_spec.conversation import conversation_template
from fastchat_spec.heads.chimera import HEAD_ARCHS, ChimeraDrafter, decoder_layer_class, new_drafter_for
from fastchat_spec.train.arguments import parse_args
from fastchat_spec.train.checkpoint import stored_dtype, without_prefix, write_heads_only
from fastchat_spec.train.dataset import IGNORE_TOKEN_ID, Collator, training_datasets
from fastchat_spec.train.losses import head_logs, head_loss, kl_to_teacher
from fastchat_spec.train.report import finish, train_and_measure
from fastchat_spec.train.trainer import HeadTrainer, TrainingModule, base_hidden_states, load_base, saving_on_sigterm

DEFAULTS = {"learning_rate": "1e-3"}


@dataclass
class ChimeraArguments:
    chimera_num_heads: int = field(default=4, metadata={"help": "Number of residual decoding heads (draft depth)."})
    chimera_num_layers: int = field(default=1, metadata={"help": "Residual blocks per head."})
    chimera_head_arch: str = field(default="residual", metadata={
        "help": "What the heads read: residual ([base hidden state; encoder output], ours) or published (the "
                "encoder output alone, the architecture of the Chimera authors' released weights).",
        "choices": list(HEAD_ARCHS)})
    chimera_decay_coefficient: float = field(default=0.8, metadata={
        "help": "Head k's loss weight is decay^k: later heads are less accurate and matter less."})
    distill_weight: float = field(default=1.0, metadata={
        "help": "Weight of KL(base || head) against the base's own next-token distribution; 0: data loss only."})
    chimera_init: str | None = field(default=None, metadata={
        "help": "Start from the weights of this Chimera checkpoint folder (same head count and layers)."})
    chimera_safetensors: bool = field(default=False, metadata={
        "help": "Write the weight files as .safetensors instead of the published pickled .pt."})
    tree_nodes: int = field(default=63, metadata={
        "help": "Nodes of the candidate tree grown from held-out accuracies and saved as chimera_choices."})
    base_path_style: str = field(default="relative", metadata={
        "help": "How config.json names a local base folder: relative (to the checkpoint) or absolute.",
        "choices": ["relative", "absolute"]})


# --------------------------------------------------------------------------- the training module
class ChimeraTraining(TrainingModule):
    """The frozen base and the drafter; ``forward`` returns ``(loss, logs)`` for ``trainer.HeadTrainer``."""

    def __init__(self, base, drafter: ChimeraDrafter, decay: float = 0.8, distill_weight: float = 1.0):
        super().__init__()
        self.base, self.drafter = base, drafter
        self.decay, self.distill_weight = decay, distill_weight

    def head_predictions(self, input_ids, labels, hidden):
        """[(logits (B, T-k-2, V), targets (B, T-k-2))] per head k, teacher-forced."""
        embed, rotary = self.base.get_input_embeddings(), self.base.get_decoder().rotary_emb
        return [(self.drafter.teacher_forced_logits(k, embed, rotary, input_ids, hidden), labels[:, k + 2:])
                for k in range(self.drafter.num_heads)]

    def forward(self, input_ids, attention_mask, labels, num_items_in_batch=None):
        distill = self.distill_weight > 0
        hidden, base_logits = base_hidden_states(self.base, input_ids, attention_mask, with_logits=distill)
        loss, logs = hidden.new_zeros((), dtype=torch.float32), {}
        for k, (logits, targets) in enumerate(self.head_predictions(input_ids, labels, hidden)):
            loss_k = head_loss(logits, targets, num_items_in_batch)
            logs.update(head_logs(f"head{k}", loss_k, logits, targets))
            if distill:
                valid = targets != IGNORE_TOKEN_ID
                teacher = base_logits[:, k + 1: k + 1 + targets.shape[1]]  # the base at t+k+1 guesses t+k+2
                kl = kl_to_teacher(logits[valid], teacher[valid], num_items_in_batch)
                loss_k = loss_k + self.distill_weight * kl
                logs[f"head{k}_kl"] = kl.detach().float()
            loss = loss + self.decay**k * loss_k
        return loss, logs


def chimera_predict(model: ChimeraTraining, batch: dict):
    """``predict_fn`` for ``report.evaluate_heads``: held-out logits of every head."""
    hidden, _ = base_hidden_states(model.base, batch["input_ids"], batch["attention_mask"], with_logits=False)
    return model.head_predictions(batch["input_ids"], batch["labels"], hidden)


# --------------------------------------------------------------------------- building and writing
def build_drafter(base, args: ChimeraArguments) -> ChimeraDrafter:
    drafter = new_drafter_for(base, args.chimera_num_heads, args.chimera_num_layers,
                              head_arch=args.chimera_head_arch)
    if args.chimera_init:
        _load_checkpoint_parts(drafter, args.chimera_init)
    return drafter.to(next(base.parameters()).device)


def _load_checkpoint_parts(drafter: ChimeraDrafter, path: str) -> None:
    from fastchat_spec.adapters.chimera import read_parts

    for name, (state, file) in read_parts(path).items():
        try:
            getattr(drafter, name).load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"--chimera_init {file} does not fit --chimera_num_heads/--chimera_num_layers/"
                             f"--chimera_head_arch and this base: {e}") from None


def write_checkpoint(state: dict, out_dir: str, args: ChimeraArguments, base, base_path: str, tree,
                     conv_template: str | None) -> None:
    from fastchat_spec.adapters.chimera import write_chimera_checkpoint

    drafter = ChimeraDrafter(base.config, args.chimera_num_heads, args.chimera_num_layers,
                             layer_class=decoder_layer_class(base), head_arch=args.chimera_head_arch)
    drafter.load_state_dict(without_prefix(state, "drafter."), strict=True)
    drafter.to(stored_dtype(base.config))
    write_heads_only(write_chimera_checkpoint, out_dir, drafter, base_path, args.base_path_style, tree, conv_template,
                     safetensors=args.chimera_safetensors)


# --------------------------------------------------------------------------- main
@saving_on_sigterm()
def train(argv=None) -> dict | None:
    """Parse ``argv``, train, measure, write the checkpoint and its report; the report on the main process."""
    model_args, data_args, training_args, cargs = parse_args(
        ChimeraArguments, defaults=DEFAULTS, argv=argv, description=__doc__,
        prog="python -m fastchat_spec.train.chimera")
    training_args.gradient_checkpointing = False  # the base is frozen; the drafter is one layer deep
    base, tokenizer = load_base(model_args, training_args, max_len=data_args.model_max_length)
    drafter = build_drafter(base, cargs)
    model = ChimeraTraining(base, drafter, cargs.chimera_decay_coefficient, cargs.distill_weight)
    train_set, heldout = training_datasets(tokenizer, data_args)
    trainer = HeadTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=heldout,
                          data_collator=Collator(tokenizer.pad_token_id))
    report: dict = {"method": "chimera", "chimera_args": asdict(cargs),
                    "base_model": model_args.model_name_or_path, "train_conversations": len(train_set),
                    "heldout_conversations": len(heldout) if heldout else 0,
                    "drafter_parameters": sum(p.numel() for p in drafter.parameters())}
    report.update(train_and_measure(trainer, heldout, chimera_predict, cargs.chimera_num_heads, cargs.tree_nodes,
                                    tree_key="chimera_choices"))
    tree = report["chimera_choices"]
    conv_template = conversation_template(model_args.model_name_or_path).name

    def write(state, out_dir):
        write_checkpoint(state, out_dir, cargs, base, model_args.model_name_or_path, tree, conv_template)

    return finish(trainer, write, report)


def main(argv=None) -> None:
    train(argv)


if __name__ == "__main__":
    main()
