"""Train Hydra and Hydra++ heads (Ankner et al. 2024, arXiv 2402.05109) on a frozen base.

Head i (0-based) guesses the token at t + i + 2 from the base's last hidden
state at t and the embeddings of the tokens t+1 .. t+i+1. In training those
previous tokens are the true ones (teacher forcing), so all heads train in one
pass over each batch. Hydra++ (``--hydra_head_arch prefix-mlp``) adds one
decoder layer over the base hidden states in front of the heads, and its
recipe distils the base: ``--teacher_loss_weight 1 --lm_loss_weight 0``.

Loss, summed over heads (as the paper, no per-head decay)::

    lm_loss_weight             * CE(head logits, data token at t + i + 2)
  + teacher_loss_weight        * soft CE to the base's distribution for that token
                                 (its logits at t + i + 1)
  + reconstruction_loss_weight * SmoothL1(head hidden state, base hidden state at t + i + 1)

``--embedding_noise A`` adds NEFTune-style uniform noise of size A / sqrt(T * H)
to the heads' inputs during training. Writes ``hydra_lm_head.safetensors`` and
a config.json in the published layout, with a tree (``hydra_choices``) grown
from the heads' held-out agreement with the base's greedy tokens (what
verification accepts). Flag names follow zankner/Hydra; ``--medusa_num_heads``,
``--medusa_num_layers`` and ``--medusa_num_decoder_layers`` are accepted as
aliases. Every HF TrainingArguments flag works too. Examples::

    python -m fastchat_spec.train.hydra --model_name_or_path BASE --data_path train.json \\
        --output_dir hydra-BASE --hydra_num_heads 4 --hydra_num_layers 4 --hydra_head_arch mlp
    torchrun --nproc_per_node=8 -m fastchat_spec.train.hydra ... --hydra_head_arch prefix-mlp \\
        --teacher_loss_weight 1.0 --lm_loss_weight 0.0
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from fastchat_spec.conversation import conversation_template
from fastchat_spec.heads.hydra import ARCHS, HydraHeads
from fastchat_spec.train.arguments import parse_args
from fastchat_spec.train.checkpoint import without_prefix, write_heads_only
from fastchat_spec.train.dataset import IGNORE_TOKEN_ID, Collator, training_datasets
from fastchat_spec.train.losses import head_logs, head_loss, per_item, shift_labels
from fastchat_spec.train.report import finish, train_and_measure
from fastchat_spec.train.trainer import HeadTrainer, TrainingModule, base_hidden_states, load_base, saving_on_sigterm

DEFAULTS = {"learning_rate": "1e-3"}


@dataclass
class HydraArguments:
    hydra_num_heads: int = field(default=4, metadata={
        "help": "Number of heads (draft depth).", "aliases": ["--medusa_num_heads"]})
    hydra_num_layers: int = field(default=1, metadata={
        "help": "Residual blocks per head (the first one also reduces the head's wide input).",
        "aliases": ["--medusa_num_layers"]})
    hydra_head_arch: str | None = field(default=None, metadata={
        "help": "mlp (Hydra) or prefix-mlp (Hydra++: one extra decoder layer feeds the heads). "
                "Default: mlp, or what --hydra_num_decoder_layers implies.", "choices": list(ARCHS)})
    hydra_num_decoder_layers: int | None = field(default=None, metadata={
        "help": "Extra decoder layers in front of the heads: 0 (= mlp) or 1 (= prefix-mlp).",
        "aliases": ["--medusa_num_decoder_layers"]})
    grounded_heads: bool = field(default=True, metadata={
        "help": "Feed each head the tokens chosen before it (Hydra). False gives Medusa-like heads."})
    hidden_state_offset: int = field(default=0, metadata={
        "help": "Which hidden layer feeds the heads, counted back from the last. Only 0 is supported."})
    lm_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy to the data."})
    teacher_loss_weight: float = field(default=0.0, metadata={
        "help": "Weight of the soft cross-entropy to the base's distribution (Hydra++ uses 1 and lm 0)."})
    reconstruction_loss_weight: float = field(default=0.0, metadata={
        "help": "Weight of SmoothL1 between each head's hidden state and the base's next hidden state."})
    embedding_noise: float = field(default=0.0, metadata={
        "help": "NEFTune alpha: uniform noise alpha / sqrt(T * H) on the heads' inputs while training (0: off)."})
    dropout_rate: float = field(default=0.0, metadata={"help": "Dropout inside prefix-mlp heads."})
    tree_nodes: int = field(default=63, metadata={
        "help": "Nodes of the candidate tree grown from held-out agreement with the base, saved as hydra_choices."})
    base_path_style: str = field(default="relative", metadata={
        "help": "How config.json names a local base folder: relative (to the checkpoint) or absolute.",
        "choices": ["relative", "absolute"]})

    def resolve(self) -> HydraArguments:
        """Check the flags together and settle the architecture; errors name the flag to change."""
        implied = {None: None, 0: "mlp", 1: "prefix-mlp"}
        if self.hydra_num_decoder_layers not in implied:
            raise SystemExit(f"--hydra_num_decoder_layers must be 0 (mlp) or 1 (prefix-mlp), "
                             f"got {self.hydra_num_decoder_layers}")
        from_layers = implied[self.hydra_num_decoder_layers]
        if self.hydra_head_arch and from_layers and self.hydra_head_arch != from_layers:
            raise SystemExit(f"--hydra_head_arch {self.hydra_head_arch} contradicts --hydra_num_decoder_layers "
                             f"{self.hydra_num_decoder_layers}; pass only one of them")
        self.hydra_head_arch = self.hydra_head_arch or from_layers or "mlp"
        self.hydra_num_decoder_layers = 1 if self.hydra_head_arch == "prefix-mlp" else 0
        if self.hidden_state_offset != 0:
            raise NotImplementedError("--hidden_state_offset other than 0 is not supported (the generation "
                                      "engine feeds the heads the last hidden state); drop the flag")
        if self.hydra_num_heads < 1 or self.hydra_num_layers < 1:
            raise SystemExit("--hydra_num_heads and --hydra_num_layers must be >= 1")
        if self.lm_loss_weight <= 0 and self.teacher_loss_weight <= 0 and self.reconstruction_loss_weight <= 0:
            raise SystemExit("every loss weight is 0: set --lm_loss_weight or --teacher_loss_weight")
        return self


# --------------------------------------------------------------------------- the training module
class HydraTraining(TrainingModule):
    """The frozen base and its Hydra heads; ``forward`` returns ``(loss, logs)`` for ``trainer.HeadTrainer``."""

    def __init__(self, base, heads: HydraHeads, args: HydraArguments):
        super().__init__()
        self.base, self.heads, self.args = base, heads, args

    def head_outputs(self, input_ids, attention_mask, labels, with_base_logits: bool = False):
        """For each head i: (logits (N, V), hidden (N, H), data targets (N,), base logits (N, V) or None,
        base hidden (N, H)) at the N positions whose target t + i + 2 is an answer token."""
        with_logits = with_base_logits or self.args.teacher_loss_weight > 0
        hidden, logits = base_hidden_states(self.base, input_ids, attention_mask, with_logits=with_logits)
        dtype = next(self.heads.parameters()).dtype
        with torch.no_grad():
            embeds = self.base.get_input_embeddings()(input_ids).to(dtype)
        inputs = hidden.detach().to(dtype)
        if self.training and self.args.embedding_noise > 0:
            inputs, embeds = _neftune(inputs, attention_mask, self.args.embedding_noise), \
                _neftune(embeds, attention_mask, self.args.embedding_noise)
        feature = self.heads.feature(inputs)
        for i in range(self.heads.num_heads):
            targets = shift_labels(labels, i + 2)
            rows, cols = (targets != IGNORE_TOKEN_ID).nonzero(as_tuple=True)
            x = self.heads.teacher_forced_input(i, feature, embeds, rows, cols)
            logits_i, hidden_i = self.heads.head(i, x)
            teacher = logits[rows, cols + i + 1] if logits is not None else None
            yield logits_i, hidden_i, targets[rows, cols], teacher, hidden[rows, cols + i + 1]

    def forward(self, input_ids, attention_mask, labels, num_items_in_batch=None):
        a = self.args
        loss, logs = None, {}
        for i, (logits_i, hidden_i, targets, teacher, next_hidden) in enumerate(
                self.head_outputs(input_ids, attention_mask, labels)):
            lm = head_loss(logits_i, targets, num_items_in_batch)
            loss_i = a.lm_loss_weight * lm
            logs.update(head_logs(f"head{i}", lm, logits_i, targets))
            if teacher is not None:
                soft = soft_cross_entropy(logits_i, teacher, num_items_in_batch)
                loss_i = loss_i + a.teacher_loss_weight * soft
                logs[f"head{i}_teacher_loss"] = soft.detach()
                logs[f"head{i}_teacher_top1"] = _agreement(logits_i, teacher)
            if a.reconstruction_loss_weight > 0:
                rec = reconstruction_loss(hidden_i, next_hidden, num_items_in_batch)
                loss_i = loss_i + a.reconstruction_loss_weight * rec
                logs[f"head{i}_reconstruction_loss"] = rec.detach()
            loss = loss_i if loss is None else loss + loss_i
        return loss, logs


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor, num_items=None) -> torch.Tensor:
    """-sum p_base log q_head over positions, divided by num_items (or their count)."""
    teacher = torch.softmax(teacher_logits.float(), dim=-1)
    total = -(teacher * torch.log_softmax(logits.float(), dim=-1)).sum()
    return per_item(total, num_items, logits.shape[0])


def reconstruction_loss(hidden: torch.Tensor, target: torch.Tensor, num_items=None) -> torch.Tensor:
    """SmoothL1 per position (mean over features), summed and divided like the other losses."""
    per_position = nn.functional.smooth_l1_loss(hidden.float(), target.float(), reduction="none").mean(-1)
    return per_item(per_position.sum(), num_items, hidden.shape[0])


def _agreement(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if logits.shape[0] == 0:
            return logits.new_zeros((), dtype=torch.float32)
        return (logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()


def _neftune(x: torch.Tensor, attention_mask: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """NEFTune (Jain et al. 2023): uniform noise scaled by alpha / sqrt(sequence length * width)."""
    b, t, h = x.shape
    lengths = attention_mask.sum(-1) if attention_mask is not None else torch.full((b,), t, device=x.device)
    scale = alpha / torch.sqrt(lengths.clamp_min(1).float() * h)
    return x + (torch.rand_like(x) * 2 - 1) * scale.view(b, 1, 1).to(x.dtype)


def hydra_predict(model: HydraTraining, batch: dict):
    """``predict_fn`` for ``report.evaluate_heads``: held-out logits of every head, teacher-forced.

    The targets are the base's own greedy tokens, not the data's: greedy
    verification accepts a draft exactly when it is the base's argmax, so
    these accuracies are the acceptance rates the tree is grown from (heads
    distilled from the base would look useless against the data).
    """
    return [(logits, base_logits.argmax(-1)) for logits, _, _, base_logits, _ in
            model.head_outputs(batch["input_ids"], batch["attention_mask"], batch["labels"], with_base_logits=True)]


# --------------------------------------------------------------------------- building and writing
def build_heads(base, args: HydraArguments) -> HydraHeads:
    heads = HydraHeads(base.config, args.hydra_num_heads, args.hydra_num_layers, arch=args.hydra_head_arch,
                       grounded=args.grounded_heads, dropout=args.dropout_rate)
    heads.init_lm_heads_from(base.get_output_embeddings())
    return heads.to(next(base.parameters()).device)


def write_checkpoint(state: dict, out_dir: str, args: HydraArguments, base_config, base_path: str, tree,
                     conv_template: str | None) -> None:
    from fastchat_spec.adapters.hydra import write_hydra_checkpoint

    heads = HydraHeads(base_config, args.hydra_num_heads, args.hydra_num_layers, arch=args.hydra_head_arch,
                       grounded=args.grounded_heads)
    heads.load_state_dict(without_prefix(state, "heads."), strict=True)
    write_heads_only(write_hydra_checkpoint, out_dir, heads, base_path, args.base_path_style, tree, conv_template)


# --------------------------------------------------------------------------- main
@saving_on_sigterm()
def train(argv=None) -> dict | None:
    """Parse ``argv``, train, measure, write the checkpoint and its report; the report on the main process."""
    model_args, data_args, training_args, hargs = parse_args(
        HydraArguments, defaults=DEFAULTS, argv=argv, description=__doc__, prog="python -m fastchat_spec.train.hydra")
    hargs.resolve()
    base, tokenizer = load_base(model_args, training_args, max_len=data_args.model_max_length)
    model = HydraTraining(base, build_heads(base, hargs), hargs)
    train_set, heldout = training_datasets(tokenizer, data_args)
    trainer = HeadTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=heldout,
                          data_collator=Collator(tokenizer.pad_token_id))
    report: dict = {"method": "hydra", "hydra_args": asdict(hargs), "base_model": model_args.model_name_or_path,
                    "train_conversations": len(train_set), "heldout_conversations": len(heldout) if heldout else 0}
    report.update(train_and_measure(trainer, heldout, hydra_predict, hargs.hydra_num_heads, hargs.tree_nodes,
                                    heads_key="heads_agreement_with_base", tree_key="hydra_choices"))
    tree = report["hydra_choices"]
    conv_template = conversation_template(model_args.model_name_or_path).name

    def write(state, out_dir):
        write_checkpoint(state, out_dir, hargs, base.config, model_args.model_name_or_path, tree, conv_template)

    return finish(trainer, write, report)


def main(argv=None) -> None:
    train(argv)


if __name__ == "__main__":
    main()
