"""Train Medusa heads (Cai et al. 2024, arXiv 2401.10774) with the Hugging Face Trainer.

Medusa-1 (``--medusa_stage 1``): the base is frozen; head k (0-based) reads the
base's last hidden state at position t and guesses the token at t + k + 2. The
loss is sum_k decay^k * CE_k (decay = ``--medusa_decay_coefficient``, 0.8).
Writes a heads-only checkpoint (``medusa_lm_head.safetensors`` + config.json
pointing at the base) with a tree measured on held-out data.

Medusa-2 (``--medusa_stage 2``): base and heads train together. The loss is
``base_lm_weight * CE_base + distill_kl_weight * KL(original || base) +
lambda(t) * sum_k decay^k * CE_k``, lambda = ``--medusa_heads_coefficient``
(0.2) shaped by ``--medusa_scheduler``; the KL to a frozen copy of the original
base (self-distillation) keeps the base's answers. The heads learn at
``learning_rate * medusa_lr_multiplier``. Writes a full checkpoint (base
weights + ``medusa_head.*`` tensors in model.safetensors, the base config plus
``medusa_num_heads``/``medusa_num_layers``/``medusa_choices``).

Flag names follow FasterDecoding/Medusa's training scripts (``medusa_num_heads``,
``medusa_num_layers``, ``medusa_heads_coefficient``, ``medusa_decay_coefficient``,
``medusa_scheduler``, ``medusa_lr_multiplier``); every HF TrainingArguments
flag works too. Name the output folder ``medusa-<base>``: FastChat looks adapters up
by folder name first, and a name such as ``vicuna-nano-heads`` would be claimed by
its Vicuna adapter before ours reads the folder. Examples::

    python -m fastchat_spec.train.medusa --model_name_or_path BASE --data_path train.json \\
        --output_dir medusa-BASE --medusa_num_heads 4 --num_train_epochs 1
    torchrun --nproc_per_node=8 -m fastchat_spec.train.medusa ... --medusa_stage 2
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch
import transformers
from transformers import AutoConfig

from fastchat_spec.conversation import conversation_template
from fastchat_spec.heads.medusa import MedusaHeads
from fastchat_spec.train.arguments import DataArguments, parse_args
from fastchat_spec.train.checkpoint import stored_dtype, without_prefix, write_heads_only
from fastchat_spec.train.data import read_fastchat_json
from fastchat_spec.train.dataset import IGNORE_TOKEN_ID, Collator, training_datasets
from fastchat_spec.train.losses import head_logs, head_loss, kl_to_teacher, shift_labels
from fastchat_spec.train.report import finish, train_and_measure
from fastchat_spec.train.trainer import HeadTrainer, TrainingModule, base_hidden_states, load_base, saving_on_sigterm

STAGE_DEFAULTS = {1: {"learning_rate": "1e-3"}, 2: {"learning_rate": "2e-5"}}


@dataclass
class MedusaArguments:
    medusa_num_heads: int = field(default=4, metadata={"help": "Number of heads (draft depth)."})
    medusa_num_layers: int = field(default=1, metadata={"help": "Residual blocks per head."})
    medusa_stage: int = field(default=1, metadata={
        "help": "1: train heads on a frozen base (Medusa-1). 2: train base and heads jointly (Medusa-2)."})
    medusa_own_lm_head: bool = field(default=False, metadata={
        "help": "Give every head its own lm_head, initialised from the base's (Medusa v0.1 layout; "
                "vocab x hidden more weights per head). Default: heads share the frozen base lm_head."})
    medusa_decay_coefficient: float = field(default=0.8, metadata={
        "help": "Head k's loss weight is decay^k: later heads are less accurate and matter less."})
    medusa_heads_coefficient: float = field(default=0.2, metadata={
        "help": "Stage 2: weight of the heads' loss next to the base's (lambda)."})
    medusa_scheduler: str = field(default="constant", metadata={
        "help": "Stage 2: how lambda grows over training: constant | linear | sine (0 -> lambda).",
        "choices": ["constant", "linear", "sine"]})
    medusa_lr_multiplier: float = field(default=4.0, metadata={
        "help": "Stage 2: the heads' learning rate is learning_rate times this."})
    distill_kl_weight: float = field(default=1.0, metadata={
        "help": "Stage 2: weight of KL(original base || trained base) on answer tokens; 0 drops the frozen copy."})
    base_lm_weight: float = field(default=1.0, metadata={
        "help": "Stage 2: weight of the base's own cross-entropy on the data (0: pure self-distillation)."})
    medusa_init_heads: str | None = field(default=None, metadata={
        "help": "Start from the heads of this Medusa checkpoint (e.g. a stage-1 run before stage 2)."})
    tree_nodes: int = field(default=63, metadata={
        "help": "Nodes of the candidate tree grown from held-out accuracies and saved as medusa_choices."})
    base_path_style: str = field(default="relative", metadata={
        "help": "Stage 1: how config.json names a local base folder: relative (to the checkpoint) or absolute.",
        "choices": ["relative", "absolute"]})
    sample_prompts: int = field(default=3, metadata={
        "help": "Stage 2: greedy answers to this many held-out prompts before and after training."})


# --------------------------------------------------------------------------- the training module
class MedusaTraining(TrainingModule):
    """The base (frozen or not), its heads and, for self-distillation, a frozen copy of the base."""

    def __init__(self, base, heads: MedusaHeads, args: MedusaArguments, teacher=None):
        super().__init__()
        self.base, self.heads, self.teacher = base, heads, teacher
        self.stage = args.medusa_stage
        self.decay = args.medusa_decay_coefficient
        self.kl_weight = args.distill_kl_weight
        self.lm_weight = args.base_lm_weight

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        if self.stage == 2:
            self.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def head_predictions(self, hidden, labels):
        return medusa_head_predictions(self.base, self.heads, hidden, labels)

    def forward(self, input_ids, attention_mask, labels, num_items_in_batch=None, heads_weight=1.0):
        hidden, logits = base_hidden_states(self.base, input_ids, attention_mask, with_logits=self.stage == 2)
        loss, logs = hidden.new_zeros((), dtype=torch.float32), {}
        if self.stage == 2:
            loss, logs = self.base_terms(input_ids, attention_mask, labels, logits, num_items_in_batch)
        for k, (logits_k, targets) in enumerate(self.head_predictions(hidden, labels)):
            loss_k = head_loss(logits_k, targets, num_items_in_batch)
            loss = loss + heads_weight * self.decay**k * loss_k
            logs.update(head_logs(f"head{k}", loss_k, logits_k, targets, num_items_in_batch))
        return loss, logs

    def base_terms(self, input_ids, attention_mask, labels, logits, num_items):
        targets = shift_labels(labels, 1)
        lm = head_loss(logits, targets, num_items)
        logs = head_logs("base", lm, logits, targets, num_items)
        loss = self.lm_weight * lm
        if self.teacher is not None and self.kl_weight > 0:
            valid = targets != IGNORE_TOKEN_ID
            with torch.no_grad():
                _, teacher_logits = base_hidden_states(self.teacher, input_ids, attention_mask)
            kl = kl_to_teacher(logits[valid], teacher_logits[valid], num_items)
            loss = loss + self.kl_weight * kl
            logs["kl"] = kl.detach()
        return loss, logs


def medusa_head_predictions(base, heads: MedusaHeads, hidden: torch.Tensor, labels: torch.Tensor):
    """[(logits (N_k, V), targets (N_k,))] per head, only at positions that have a target.

    Selecting those positions before the heads run keeps the (tokens x vocab)
    logits small: prompts and padding never reach the lm_head.
    """
    lm_head = base.get_output_embeddings()
    out = []
    for k, head in enumerate(heads.medusa_head):
        targets = shift_labels(labels, k + 2)
        valid = targets != IGNORE_TOKEN_ID
        x = head(hidden[valid].to(head[0].linear.weight.dtype))
        logits = x if heads.own_lm_head else lm_head(x.to(lm_head.weight.dtype))
        out.append((logits, targets[valid]))
    return out


def medusa_predict(model: MedusaTraining, batch: dict):
    """``predict_fn`` for ``report.evaluate_heads``: held-out logits of every head."""
    hidden, _ = base_hidden_states(model.base, batch["input_ids"], batch["attention_mask"], with_logits=False)
    return model.head_predictions(hidden, batch["labels"])


class HeadsWeight(transformers.TrainerCallback):
    """The loss_fn of stage 2: feeds lambda(progress) into the forward (Medusa-2's heads scheduler)."""

    def __init__(self, coefficient: float, scheduler: str):
        self.coefficient, self.scheduler, self.progress = coefficient, scheduler, 1.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.progress = state.global_step / max(state.max_steps, 1)

    def weight(self) -> float:
        shape = {"constant": 1.0, "linear": self.progress, "sine": math.sin(math.pi / 2 * self.progress)}
        return self.coefficient * shape[self.scheduler]

    def __call__(self, model, inputs):
        return model(**inputs, heads_weight=self.weight())


# --------------------------------------------------------------------------- building
def build_heads(base, args: MedusaArguments) -> MedusaHeads:
    cfg = base.config
    heads = MedusaHeads(cfg.hidden_size, cfg.vocab_size, args.medusa_num_heads, args.medusa_num_layers,
                        own_lm_head=args.medusa_own_lm_head)
    if args.medusa_init_heads:
        heads.medusa_head.load_state_dict(_checkpoint_heads(args.medusa_init_heads), strict=True)
    elif args.medusa_own_lm_head:
        from transformers.integrations import is_deepspeed_zero3_enabled

        lm_head = base.get_output_embeddings()
        if is_deepspeed_zero3_enabled():  # the weight is sharded: gather it to copy it
            import deepspeed

            with deepspeed.zero.GatheredParameters([lm_head.weight]):
                heads.init_lm_heads_from(lm_head)
        else:
            heads.init_lm_heads_from(lm_head)
    return heads.to(next(base.parameters()).device)


def _checkpoint_heads(path: str) -> dict:
    from fastchat_spec.adapters.checkpoint import (
        first_existing,
        load_tensors,
        prefixed_tensors,
        read_config,
    )
    from fastchat_spec.adapters.medusa import HEAD_FILES, is_full_checkpoint

    file = first_existing(path, HEAD_FILES)
    if file:
        return load_tensors(file)
    if is_full_checkpoint(read_config(path) or {}):
        state = prefixed_tensors(path, "medusa_head.")
        if state:
            return state
    raise FileNotFoundError(f"--medusa_init_heads {path}: no Medusa head weights there (expected one of "
                            f"{HEAD_FILES} or medusa_head.* tensors); pass a Medusa checkpoint folder")


# --------------------------------------------------------------------------- writing checkpoints
def write_stage1(state: dict, out_dir: str, args: MedusaArguments, base_config, base_path: str, tree,
                conv_template):
    from fastchat_spec.adapters.medusa import write_medusa_checkpoint

    heads = MedusaHeads(base_config.hidden_size, base_config.vocab_size, args.medusa_num_heads,
                        args.medusa_num_layers, own_lm_head=args.medusa_own_lm_head)
    heads.medusa_head.load_state_dict(without_prefix(state, "heads.medusa_head."))
    write_heads_only(write_medusa_checkpoint, out_dir, heads, base_path, args.base_path_style, tree, conv_template)


def write_stage2(state: dict, out_dir: str, args: MedusaArguments, base, tokenizer, tree, conv_template,
                 dtype: torch.dtype):
    """Full checkpoint: base weights and ``medusa_head.*`` in one safetensors set, Medusa keys in config.json."""
    weights = {k: _cast(v, dtype) for k, v in without_prefix(state, "base.").items()}
    heads = without_prefix(state, "heads.medusa_head.")
    weights.update({"medusa_head." + k: _cast(v, dtype) for k, v in heads.items()})
    base.config.use_cache = True
    base.save_pretrained(out_dir, state_dict=weights, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    config_file = os.path.join(out_dir, "config.json")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    config.update({"medusa_num_heads": args.medusa_num_heads, "medusa_num_layers": args.medusa_num_layers,
                   "medusa_choices": tree})
    if conv_template:
        config["fastchat_conv_template"] = conv_template
    with open(config_file, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).contiguous() if t.is_floating_point() else t.contiguous()


# --------------------------------------------------------------------------- stage-2 samples
@torch.no_grad()
def greedy_samples(base, tokenizer, conv_template: str | None, prompts: list[str], max_new_tokens: int = 48):
    """Greedy answers of ``base`` to ``prompts`` in the model's chat template (for the report)."""
    from fastchat.conversation import get_conv_template

    device = next(base.parameters()).device
    was_training = base.training
    base.eval()
    answers = []
    for prompt in prompts:
        conv = get_conv_template(conv_template or "vicuna_v1.1")
        conv.append_message(conv.roles[0], prompt)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer(conv.get_prompt(), return_tensors="pt").input_ids.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = base.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    base.train(was_training)
    return answers


def first_prompts(data_args: DataArguments, n: int) -> list[str]:
    path = data_args.eval_data_path or data_args.data_path
    convs = read_fastchat_json(path)
    firsts = [next((t["value"] for t in c["conversations"] if t["from"] == "human"), None) for c in convs[-n:]]
    return [p for p in firsts if p]


# --------------------------------------------------------------------------- main
def build_trainer(model_args, data_args, training_args, margs: MedusaArguments):
    """(trainer, tokenizer, held-out dataset): base (+ frozen copy for stage 2), heads, data."""
    stage = margs.medusa_stage
    base, tokenizer = load_base(model_args, training_args, trainable=stage == 2,
                                max_len=data_args.model_max_length)
    teacher = None
    if stage == 2 and margs.distill_kl_weight > 0:
        _check_teacher_possible(training_args)
        teacher = copy.deepcopy(base).requires_grad_(False).eval()
    model = MedusaTraining(base, build_heads(base, margs), margs, teacher)
    train_set, heldout = training_datasets(tokenizer, data_args)
    loss_fn = HeadsWeight(margs.medusa_heads_coefficient if stage == 2 else 1.0,
                          margs.medusa_scheduler if stage == 2 else "constant")
    trainer = HeadTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=heldout,
                          data_collator=Collator(tokenizer.pad_token_id), loss_fn=loss_fn, callbacks=[loss_fn],
                          lr_multipliers={"heads.": margs.medusa_lr_multiplier} if stage == 2 else None)
    return trainer, tokenizer, heldout


@saving_on_sigterm()
def train(argv=None) -> dict | None:
    """Parse ``argv``, train, measure, write the checkpoint and its report; the report on the main process."""
    stage = _stage(argv)
    model_args, data_args, training_args, margs = parse_args(
        MedusaArguments, defaults=STAGE_DEFAULTS[stage], argv=argv, description=__doc__,
        prog="python -m fastchat_spec.train.medusa")
    training_args.gradient_checkpointing = training_args.gradient_checkpointing and stage == 2
    base_path = model_args.model_name_or_path
    trainer, tokenizer, heldout = build_trainer(model_args, data_args, training_args, margs)
    base = trainer.accelerator.unwrap_model(trainer.model).base
    conv_template = conversation_template(base_path).name
    report: dict = {"method": "medusa", "stage": stage, "medusa_args": asdict(margs), "base_model": base_path,
                    "train_conversations": len(trainer.train_dataset),
                    "heldout_conversations": len(heldout) if heldout else 0}
    prompts = first_prompts(data_args, margs.sample_prompts) if stage == 2 and margs.sample_prompts else []
    if stage == 2:
        report["before"] = _stage2_snapshot(trainer, tokenizer, conv_template, prompts,
                                            trainer.evaluate() if heldout is not None else None)
    report.update(train_and_measure(trainer, heldout, medusa_predict, margs.medusa_num_heads, margs.tree_nodes,
                                    tree_key="medusa_choices"))
    if stage == 2:
        report["after"] = _stage2_snapshot(trainer, tokenizer, conv_template, prompts, report.get("eval"))
        _print_before_after(report)
    tree = report["medusa_choices"]

    def write(state, out_dir):
        if stage == 1:
            write_stage1(state, out_dir, margs, base.config, base_path, tree, conv_template)
        else:
            write_stage2(state, out_dir, margs, base, tokenizer, tree, conv_template,
                         stored_dtype(AutoConfig.from_pretrained(base_path)))

    return finish(trainer, write, report)


def _check_teacher_possible(training_args) -> None:
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled() or training_args.fsdp:
        raise SystemExit("--distill_kl_weight needs a frozen copy of the whole base, which ZeRO-3 / FSDP shard "
                         "away: pass --distill_kl_weight 0 and train on self-distilled data instead "
                         "(python -m fastchat_spec.train.distill), or use DDP")


def _stage(argv) -> int:
    """--medusa_stage, read first because the stages have different default learning rates."""
    import argparse
    import sys

    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--medusa_stage", "--medusa-stage", type=int, default=1)
    stage = probe.parse_known_args(sys.argv[1:] if argv is None else argv)[0].medusa_stage
    if stage not in (1, 2):
        raise SystemExit(f"--medusa_stage must be 1 (heads on a frozen base) or 2 (joint training), got {stage}")
    return stage


def _stage2_snapshot(trainer, tokenizer, conv_template, prompts, metrics: dict | None) -> dict:
    """Held-out base loss / top-1 (from ``metrics``) and greedy sample answers of the base."""
    snap = {}
    if metrics is not None:
        snap["heldout_base_loss"] = metrics.get("eval_base_loss")
        snap["heldout_base_top1"] = metrics.get("eval_base_top1")
        snap["heldout_kl_to_original"] = metrics.get("eval_kl")
    if prompts and trainer.is_world_process_zero() and not trainer.is_deepspeed_enabled:
        model = trainer.accelerator.unwrap_model(trainer.model)
        snap["samples"] = [{"prompt": p, "answer": a} for p, a in
                           zip(prompts, greedy_samples(model.base, tokenizer, conv_template, prompts))]
    return snap


def _print_before_after(report: dict) -> None:
    before, after = report["before"], report["after"]
    if before.get("heldout_base_loss") is not None:
        print(f"held-out base loss: before {before['heldout_base_loss']:.4f}, after {after['heldout_base_loss']:.4f}")
    for b, a in zip(before.get("samples", []), after.get("samples", [])):
        print(f"--- prompt: {b['prompt'][:200]}\n    before: {b['answer'][:300]}\n    after:  {a['answer'][:300]}")


def main(argv=None) -> None:
    train(argv)


if __name__ == "__main__":
    main()
