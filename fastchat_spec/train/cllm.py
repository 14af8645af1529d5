"""Consistency training: turn a base model into a CLLM that Jacobi-decodes fast.

Reference: Kou et al. 2024, "CLLMs: Consistency Large Language Models"
(arXiv 2403.00835), Sec. 3.2: the global consistency loss plus an
autoregressive (AR) loss that keeps the model's answers. Data: the Jacobi
trajectories of ``python -m fastchat_spec.train.cllm_data`` (record format in
that module).

For one record (a context x, a Jacobi state y of the window and its fixed
point y*):

* global consistency loss: ``sum_k KL(p(. | x, y*_<k) || q(. | x, y_<k))``
  averaged over the window's positions, where p is the model itself with
  gradients stopped (the fixed point's predictions are the target) and q is
  the model on the intermediate state. A model that predicts the fixed point
  from any state converges in one Jacobi step. The state is drawn at random
  from the trajectory, without the fixed point, every time the record is used.
* AR loss: cross-entropy of the window's fixed point (the base's greedy
  answer) given its context, or with ``--ar_target labels`` of the dataset's
  answer at the same positions (trajectories collected with ``--use_labels``).
  HF's ``--label_smoothing_factor`` applies.

``loss = consistency + ar_weight * ar`` (the reference implementation weighs
the AR loss by 10). The fixed point's forward gives both the AR loss and the
stopped-gradient target; it runs in the same batch as the state's forward, so
each step is one forward and one backward of the model and DDP, FSDP and
DeepSpeed work as usual.

The output folder is a full Hugging Face checkpoint (weights, tokenizer) whose
config.json carries ``"fastchat_spec_method": "cllm"`` and
``"cllm": {"n_token_seq_length": n, ...}``, so FastChat serves it through our
CLLM adapter with n-token Jacobi windows. Before and after training it reports
the held-out loss and perplexity (``--eval_data_path``, FastChat JSON) and the
tokens per engine step of greedy Jacobi decoding on held-out prompts
(``cllm_eval.py``).

Usage: ``python -m fastchat_spec.train.cllm --help`` (any HF TrainingArguments
flag works, and so does ``torchrun --nproc_per_node=N -m fastchat_spec.train.cllm``).
"""
from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import transformers
from torch import nn

from fastchat_spec.conversation import configured_template
from fastchat_spec.train.arguments import (COMMON_DEFAULTS, ModelArguments, check_one_gpu_per_process, flag_given,
                                           with_defaults)
from fastchat_spec.train.checkpoint import SAVE_DTYPES, without_prefix
from fastchat_spec.train.cllm_eval import evaluate, heldout_prompts
from fastchat_spec.train.dataset import IGNORE_TOKEN_ID, supervised_dataset
from fastchat_spec.train.domain import DOMAINS
from fastchat_spec.train.report import save_and_report
from fastchat_spec.train.trainer import HeadTrainer, load_base, saving_on_sigterm, train_until_stopped

AR_TARGETS = ("teacher", "labels")

# Flags applied when the user leaves them out (on top of arguments.COMMON_DEFAULTS).
CLLM_DEFAULTS = {
    "learning_rate": "2e-5",
    "num_train_epochs": "1",
    "per_device_train_batch_size": "8",
    "warmup_ratio": "0.03",
    "logging_steps": "10",
}


@dataclass
class CllmDataArguments:
    data_path: str = field(default=None, metadata={
        "help": "Jacobi trajectories (JSON) from `python -m fastchat_spec.train.cllm_data`."})
    eval_data_path: Optional[str] = field(default=None, metadata={
        "help": "Held-out conversations (FastChat JSON) for the loss/perplexity and Jacobi speed reported "
                "before and after training."})
    model_max_length: int = field(default=1024, metadata={
        "help": "Tokens per training sequence (context + window); longer contexts lose their beginning."})
    max_train_samples: Optional[int] = field(default=None, metadata={
        "help": "Use only the first N trajectory records (quick runs)."})


@dataclass
class CllmArguments:
    ar_weight: float = field(default=10.0, metadata={
        "help": "Weight of the AR loss next to the consistency loss (10 in the reference implementation)."})
    ar_target: str = field(default="teacher", metadata={
        "help": "AR loss target: 'teacher' (the base's greedy answer, the trajectories' fixed points) or "
                "'labels' (the dataset's answers; collect with --use_labels).", "choices": list(AR_TARGETS)})
    n_token_seq_length: Optional[int] = field(default=None, metadata={
        "help": "Jacobi window written to the checkpoint's config; default: the trajectories' window."})
    save_dtype: str = field(default="float16", metadata={
        "help": "dtype of the saved weights: " + ", ".join(SAVE_DTYPES), "choices": list(SAVE_DTYPES)})
    eval_batch_size: int = field(default=8, metadata={"help": "Batch size of the held-out loss."})
    eval_jacobi_prompts: int = field(default=8, metadata={
        "help": "Held-out prompts decoded with the Jacobi engine before and after training (0: skip)."})
    eval_jacobi_tokens: int = field(default=128, metadata={
        "help": "Tokens decoded per prompt when measuring Jacobi tokens per step."})
    eval_domain: str = field(default="all", metadata={
        "help": "Held-out prompts of this domain only for the Jacobi speed (rules: fastchat_spec/train/domain.py).",
        "choices": list(DOMAINS)})


# --------------------------------------------------------------------------- data
def read_trajectories(path: str, limit: Optional[int] = None) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist; collect trajectories with "
                                "`python -m fastchat_spec.train.cllm_data --model BASE --data_path DATA.json "
                                f"--output {path}`")
    with open(path, encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); collect it again with fastchat_spec.train.cllm_data") \
                from None
    needed = ("prompt_ids", "prompt_ids_len", "answer_trajectory_ids", "jacobian_itr_id")
    if not isinstance(records, list) or not records or any(k not in records[0] for k in needed):
        raise ValueError(f"{path} is not a Jacobi trajectory file: expected a list of records with "
                         f"{', '.join(needed)} (written by fastchat_spec.train.cllm_data)")
    return records[:limit]


def window_length(records: Sequence[dict]) -> int:
    """The trajectories' n: the longest state (windows cut at EOS are shorter)."""
    return max(len(s) for r in records for s in r["answer_trajectory_ids"])


def _fit(seq: List[int], keep_from: int, max_len: int) -> tuple[List[int], int]:
    """``seq`` without the beginning that exceeds ``max_len``; returns it and the shift of positions."""
    cut = max(0, len(seq) - max_len)
    if cut > keep_from:
        raise ValueError(f"a window does not fit --model_max_length {max_len}; raise it")
    return seq[cut:], cut


@dataclass
class TrajectoryCollator:
    """Batches of [fixed-point rows; state rows (; label rows)], right-padded, one forward for all.

    Row b of the fixed block is context + y*, row B+b is context + y (a random
    non-final state). ``window_pos[b, k]`` is the position whose logits predict
    window token k (the same in both blocks). ``ar_block`` names the block whose
    rows ``ar_pos`` feed the AR loss against ``ar_targets``.
    """

    pad_token_id: int
    window: int
    max_len: int
    ar_target: str = "teacher"
    seed: int = 0

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def __call__(self, records: List[dict]) -> dict:
        b, n = len(records), self.window
        fixed_rows, state_rows, label_rows = [], [], []
        window_pos = torch.zeros(b, n, dtype=torch.long)
        window_valid = torch.zeros(b, n, dtype=torch.bool)
        ar_pos = torch.zeros(b, n, dtype=torch.long)
        ar_targets = torch.full((b, n), IGNORE_TOKEN_ID, dtype=torch.long)
        for i, r in enumerate(records):
            states = r["answer_trajectory_ids"]
            fixed = states[-1]
            state = self.rng.choice(states[:-1]) if len(states) > 1 else fixed
            m = len(fixed)
            context = r["prompt_ids"]
            seq, cut = _fit(context + fixed, len(context) - 1, self.max_len)
            first = len(context) - cut - 1  # logits here predict window token 0
            fixed_rows.append(seq)
            state_rows.append((context + state)[cut:])
            window_pos[i, :m] = torch.arange(first, first + m)
            window_valid[i, :m] = True
            if self.ar_target == "teacher":
                ar_pos[i, :m] = window_pos[i, :m]
                ar_targets[i, :m] = torch.tensor(fixed)
            else:
                label_rows.append(self._label_row(r, n, ar_pos[i], ar_targets[i]))
        rows = fixed_rows + state_rows + label_rows
        width = -(-max(len(s) for s in rows) // 8) * 8
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        for row, seq in enumerate(rows):
            input_ids[row, : len(seq)] = torch.tensor(seq)
        return {"input_ids": input_ids, "window_pos": window_pos, "window_valid": window_valid,
                "ar_pos": ar_pos, "ar_targets": ar_targets,
                "ar_block": torch.tensor(0 if self.ar_target == "teacher" else 2)}

    def _label_row(self, record: dict, n: int, pos: torch.Tensor, targets: torch.Tensor) -> List[int]:
        """The dataset answer up to this window's end; the window's span of it is the AR target."""
        labels = record.get("labels_ids")
        if labels is None:
            raise ValueError("--ar_target labels needs trajectories with labels_ids: collect them with "
                             "`python -m fastchat_spec.train.cllm_data ... --use_labels`")
        start = record["prompt_ids_len"] + record["jacobian_itr_id"] * n
        end = min(start + n, len(labels))
        if end <= start:  # the greedy answer outlived the dataset's: nothing to learn here
            return labels[: max(1, min(len(labels), self.max_len))]
        seq, cut = _fit(labels[:end], start - 1, self.max_len)
        span = end - start
        pos[:span] = torch.arange(start - cut - 1, end - cut - 1)
        targets[:span] = torch.tensor(labels[start:end])
        return seq


# --------------------------------------------------------------------------- objective
class ConsistencyObjective(nn.Module):
    """The trained module: the base model plus the CLLM losses; ``forward`` returns ``(loss, logs)``."""

    def __init__(self, base: nn.Module, ar_weight: float, label_smoothing: float = 0.0):
        super().__init__()
        self.base = base
        self.ar_weight = ar_weight
        self.label_smoothing = label_smoothing

    def forward(self, input_ids, window_pos, window_valid, ar_pos, ar_targets, ar_block, **_):
        b = window_pos.shape[0]
        logits = self.base(input_ids=input_ids, use_cache=False).logits  # (R, L, V), R = 2B or 3B
        rows = torch.arange(b, device=logits.device).view(-1, 1)
        teacher = logits[:b][rows, window_pos].detach().float()  # (B, n, V)
        student = logits[b : 2 * b][rows, window_pos].float()
        kl = nn.functional.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True,
                                  reduction="none").sum(-1)  # (B, n)
        valid = window_valid.float()
        consistency = (kl * valid).sum() / valid.sum().clamp_min(1)
        block = int(ar_block) * b
        ar_logits = logits[block : block + b][rows, ar_pos].float()
        if (ar_targets != IGNORE_TOKEN_ID).any():
            ar = nn.functional.cross_entropy(ar_logits.flatten(0, 1), ar_targets.flatten(),
                                             ignore_index=IGNORE_TOKEN_ID, label_smoothing=self.label_smoothing)
        else:
            ar = ar_logits.sum() * 0.0  # keeps the graph whole (DDP) when a batch has no AR targets
        loss = consistency + self.ar_weight * ar
        return loss, {"consistency_loss": consistency.detach(), "ar_loss": ar.detach()}


# --------------------------------------------------------------------------- command line
def make_parser():
    return transformers.HfArgumentParser(
        (ModelArguments, CllmDataArguments, CllmArguments, transformers.TrainingArguments),
        prog="python -m fastchat_spec.train.cllm",
        description=(
            "Consistency-train a base model on its Jacobi trajectories (CLLM, arXiv 2403.00835): global "
            "consistency loss + AR loss, with the Hugging Face Trainer. Needs --model_name_or_path (the base "
            "the trajectories came from), --data_path (from `python -m fastchat_spec.train.cllm_data`) and "
            "--output_dir (name it with 'cllm' in it, e.g. runs/cllm-vicuna-small). Takes every Hugging Face "
            "TrainingArguments flag. Defaults when left out: "
            + ", ".join(f"{k}={v}" for k, v in {**COMMON_DEFAULTS, **CLLM_DEFAULTS}.items())
            + "; bf16 on a bf16 GPU."),
    )


def parse_arguments(argv: Optional[Sequence[str]] = None):
    parser = make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, cllm_args, training_args = parser.parse_args_into_dataclasses(
        args=with_defaults(argv, {**COMMON_DEFAULTS, **CLLM_DEFAULTS}))
    if not model_args.model_name_or_path:
        parser.error("--model_name_or_path is required: the base model the trajectories were collected from")
    if not data_args.data_path:
        parser.error("--data_path is required: trajectories from `python -m fastchat_spec.train.cllm_data`")
    if not flag_given(argv, "output_dir"):
        parser.error("--output_dir is required, e.g. --output_dir runs/cllm-vicuna-small")
    if data_args.eval_data_path and not os.path.isfile(data_args.eval_data_path):
        parser.error(f"--eval_data_path {data_args.eval_data_path} does not exist (FastChat JSON of held-out "
                     "conversations, e.g. from `python -m fastchat_spec.train.data`)")
    check_one_gpu_per_process(parser, training_args, "fastchat_spec.train.cllm")
    return model_args, data_args, cllm_args, training_args


def write_checkpoint(base: nn.Module, tokenizer, out_dir: str, window: int, base_path: str,
                     state_dict: Optional[dict] = None, dtype: torch.dtype = torch.float16,
                     extra: Optional[dict] = None) -> None:
    """The trained base in ``dtype`` as a CLLM checkpoint (``adapters.cllm.write_cllm_checkpoint``), recording
    its base and, where the base names one, its conversation template."""
    from fastchat_spec.adapters.cllm import write_cllm_checkpoint

    state = state_dict if state_dict is not None else base.state_dict()
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    base.to(dtype)  # save_pretrained records the module's dtype in config.json
    base.config.use_cache = True
    template = configured_template(base_path)
    if template:
        base.config.fastchat_conv_template = template
    write_cllm_checkpoint(out_dir, base, tokenizer, window, {"base_model_name_or_path": base_path, **(extra or {})},
                          state_dict=state)


@saving_on_sigterm()
def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Command line entry point; returns the report (main process) also written to train_report.json."""
    from fastchat_spec.conversation import conversation_template
    from fastchat_spec.train.data import read_fastchat_json

    model_args, data_args, cllm_args, training_args = parse_arguments(argv)
    records = read_trajectories(data_args.data_path, data_args.max_train_samples)
    window = cllm_args.n_token_seq_length or window_length(records)
    base, tokenizer = load_base(model_args, training_args, trainable=True, max_len=data_args.model_max_length)
    base.to(training_args.device)
    verbose = training_args.process_index == 0

    heldout, prompts = None, []
    if data_args.eval_data_path and verbose:
        heldout = supervised_dataset(tokenizer, data_args.eval_data_path, data_args.model_max_length)
        template = conversation_template(model_args.model_name_or_path)
        prompts = heldout_prompts(read_fastchat_json(data_args.eval_data_path), template,
                                  cllm_args.eval_jacobi_prompts, cllm_args.eval_domain)
    measure = (cllm_args.eval_batch_size, cllm_args.eval_jacobi_tokens)
    before = evaluate(base, tokenizer, heldout, prompts, window, *measure, what="before") if verbose else {}

    objective = ConsistencyObjective(base, cllm_args.ar_weight, training_args.label_smoothing_factor)
    collator = TrajectoryCollator(tokenizer.pad_token_id, window, data_args.model_max_length, cllm_args.ar_target,
                                  seed=training_args.seed)
    trainer = HeadTrainer(model=objective, args=training_args, train_dataset=records, data_collator=collator)
    result, stopped_at = train_until_stopped(trainer)
    after = evaluate(base, tokenizer, heldout, prompts, window, *measure, what="after") if verbose else {}

    report = {"records": len(records), "window": window, "train_loss": result.training_loss,
              "train_seconds": result.metrics.get("train_runtime"), "stopped_by_sigterm_at_step": stopped_at,
              "before": before, "after": after}

    def write(state: dict, out_dir: str) -> None:
        write_checkpoint(base, tokenizer, out_dir, window, model_args.model_name_or_path,
                         without_prefix(state, "base."), SAVE_DTYPES[cllm_args.save_dtype],
                         {"ar_weight": cllm_args.ar_weight, "ar_target": cllm_args.ar_target})

    final = save_and_report(trainer, training_args.output_dir, write, report)
    if verbose:
        print(f"saved the CLLM to {training_args.output_dir}: window {window}, train loss "
              f"{result.training_loss:.4f}; before {json.dumps(before)}; after {json.dumps(after)}")
    return final


if __name__ == "__main__":
    main()
