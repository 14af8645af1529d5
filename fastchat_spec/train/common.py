"""Shared code for training draft heads (Medusa, Hydra, Chimera) with the Hugging Face Trainer.

A method module writes an ``nn.Module`` that holds the base and its heads and
whose ``forward(input_ids, attention_mask, labels, num_items_in_batch=None)``
returns ``(loss, logs)`` (``logs``: name -> 0-dim tensor, e.g. ``head0_loss``,
``head0_top1``). Everything else is here:

==============================================  ===========================================================
``ModelArguments``, ``DataArguments``           dataclasses for ``HfArgumentParser`` (+ HF ``TrainingArguments``)
``parse_args(method_cls, defaults, argv)``      parse ``argv``; ``defaults`` apply only to flags the user left out
``load_base(model_args, training_args, ...)``   (base, tokenizer); frozen unless ``trainable``; 4/8-bit on CUDA
``training_datasets(tokenizer, data_args)``     (train, held-out) datasets, held-out split when no eval file
``supervised_dataset(tokenizer, path, max_len)``  FastChat JSON -> tokens through ``fastchat.train.train.preprocess``
``Collator(pad_token_id)``                      pads a batch to its longest row (labels with ``IGNORE_TOKEN_ID``)
``base_hidden_states(base, ids, mask)``         last hidden state (after the final norm) and base logits
``shift_labels(labels, offset)``                targets aligned with input positions: ``[:, t] = labels[:, t+offset]``
``head_loss`` / ``shifted_head_loss``           cross-entropy; divided by HF's global token count when given
``topk_accuracy(logits, targets, ks)``          fractions of targets within the top k
``head_logs(name, loss, logits, targets, n)``   ``{name}_loss/_top1/_top5``; pass ``num_items_in_batch`` as ``n``
``HeadTrainer(loss_fn=, lr_multipliers=)``      ``Trainer`` that logs every entry of ``logs`` (train and eval)
``evaluate_heads(model, dataset, predict_fn)``  held-out hits per head and rank -> top-1/top-5 and acc[depth][rank]
``save_and_report(trainer, out, write, report)``  gather weights, write the checkpoint + ``train_report.json``
==============================================  ===========================================================

Offsets: labels are aligned with ``input_ids`` (``labels[t]`` is ``input_ids[t]``
or ``IGNORE_TOKEN_ID``). The base's lm_head at position ``t`` predicts offset 1;
Medusa head ``k`` (0-based) predicts offset ``k + 2``.

Loss scaling: the Trainer counts the trainable label tokens of the whole
optimizer step (all micro-batches, all processes) and hands the count to
``compute_loss``; losses are token sums divided by that count, so N processes
with batch b give the same update as one process with batch N*b.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import transformers
from torch import nn
from transformers.trainer_pt_utils import LabelSmoother

IGNORE_TOKEN_ID = LabelSmoother.ignore_index  # -100, as in fastchat.train.train
REPORT_FILE = "train_report.json"


# --------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=None, metadata={"help": "Base model: a Hugging Face folder or hub id (e.g. the vicuna-nano folder)."})
    load_in_4bit: bool = field(default=False, metadata={
        "help": "Load the frozen base in 4-bit NF4 (bitsandbytes, CUDA only) to save GPU memory."})
    load_in_8bit: bool = field(default=False, metadata={
        "help": "Load the frozen base in 8-bit (bitsandbytes, CUDA only)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Allow model code from the hub (only for bases that need it)."})


@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={
        "help": "Training conversations in FastChat JSON ([{id, conversations: [{from, value}]}])."})
    eval_data_path: str | None = field(default=None, metadata={
        "help": "Held-out conversations (FastChat JSON). Without it, --heldout_fraction of --data_path is held out."})
    model_max_length: int = field(default=2048, metadata={
        "help": "Tokens per conversation; longer ones are truncated."})
    heldout_fraction: float = field(default=0.02, metadata={
        "help": "Share of --data_path held out (by conversation id) when --eval_data_path is not given; 0 disables."})
    lazy_preprocess: bool = field(default=False, metadata={
        "help": "Tokenize conversations when first used instead of all up front."})
    preprocessing_num_workers: int | None = field(default=None, metadata={
        "help": "Processes that tokenize up front (default: the CPU cores, shared by local ranks, at most 16)."})


# Applied when the user did not pass the flag (HF's own defaults suit LM fine-tuning, not heads).
COMMON_DEFAULTS = {
    "report_to": "none",
    "save_strategy": "no",
    "remove_unused_columns": "False",
    "logging_steps": "10",
    "lr_scheduler_type": "cosine",
    "warmup_ratio": "0.1",
    "weight_decay": "0.0",
    "ddp_find_unused_parameters": "False",
}


def _flag_given(argv: Sequence[str], name: str) -> bool:
    forms = {"--" + name, "--" + name.replace("_", "-")}
    return any(a in forms or a.split("=", 1)[0] in forms for a in argv)


def with_defaults(argv: Sequence[str], defaults: dict) -> list[str]:
    """``argv`` plus ``--key value`` for every default whose flag is absent."""
    out = list(argv)
    for key, value in defaults.items():
        if not _flag_given(argv, key):
            out += ["--" + key, str(value)]
    cuda = torch.cuda.is_available()
    if cuda and torch.cuda.is_bf16_supported() and not (_flag_given(argv, "bf16") or _flag_given(argv, "fp16")):
        out += ["--bf16", "True"]
    if not cuda:  # CPU runs; under torchrun, DDP over gloo
        cpu = [("dataloader_pin_memory", "False"), ("use_cpu", "True")]
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            cpu.append(("ddp_backend", "gloo"))
        for key, value in cpu:
            if not _flag_given(argv, key):
                out += ["--" + key, value]
    return out


def parse_args(method_cls=None, defaults: dict | None = None, argv: Sequence[str] | None = None,
               description: str = "", prog: str | None = None):
    """(model_args, data_args, training_args, method_args or None) from the command line."""
    import argparse

    classes = [ModelArguments, DataArguments] + ([method_cls] if method_cls else []) + [transformers.TrainingArguments]
    defaults = {**COMMON_DEFAULTS, **(defaults or {})}
    epilog = ("Defaults that differ from Hugging Face's (any flag you pass wins): "
              + ", ".join(f"--{k} {v}" for k, v in defaults.items())
              + "; --bf16 True on GPUs that support it; on CPU --use_cpu True (gloo under torchrun).")
    parser = transformers.HfArgumentParser(classes, prog=prog, description=description, epilog=epilog,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = parser.parse_args_into_dataclasses(args=with_defaults(argv, defaults))
    model_args, data_args = parsed[0], parsed[1]
    method_args = parsed[2] if method_cls else None
    training_args = parsed[-1]
    if not model_args.model_name_or_path:
        parser.error("--model_name_or_path is required (the base model folder or hub id)")
    if not data_args.data_path:
        parser.error("--data_path is required (training conversations in FastChat JSON)")
    if not _flag_given(argv, "output_dir"):
        parser.error("--output_dir is required (the checkpoint folder to write)")
    if training_args.n_gpu > 1:
        parser.error(f"{training_args.n_gpu} GPUs are visible to one process: launch with "
                     f"torchrun --nproc_per_node={training_args.n_gpu} -m ... (or set CUDA_VISIBLE_DEVICES=0)")
    return model_args, data_args, training_args, method_args


# --------------------------------------------------------------------------- base model
def load_base(model_args: ModelArguments, training_args, trainable: bool = False, max_len: int | None = None):
    """(base, tokenizer). A frozen base loads in the training dtype; a trainable one in fp32 (autocast)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_args.model_name_or_path
    kwargs = {"trust_remote_code": model_args.trust_remote_code}
    if training_args.bf16 and not trainable:
        kwargs["dtype"] = torch.bfloat16
    elif training_args.fp16 and not trainable:
        kwargs["dtype"] = torch.float16
    else:
        kwargs["dtype"] = torch.float32
    quant = _quantization_config(model_args, kwargs["dtype"], trainable)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": training_args.device.index or 0}
    base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    base.config.use_cache = False
    base.requires_grad_(trainable)
    if not trainable:
        base.eval()  # no dropout in the frozen base: its hidden states are the heads' fixed inputs
    tok_kwargs = {"use_fast": False, "padding_side": "right", "trust_remote_code": model_args.trust_remote_code}
    if max_len:
        tok_kwargs["model_max_length"] = max_len
    tokenizer = AutoTokenizer.from_pretrained(path, **tok_kwargs)
    if tokenizer.pad_token != tokenizer.unk_token and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token  # as FastChat's train.py: labels mask padding anyway
    return base, tokenizer


def _quantization_config(model_args: ModelArguments, dtype, trainable: bool):
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    flag = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit"
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise ValueError("pass only one of --load_in_4bit and --load_in_8bit")
    if not torch.cuda.is_available():
        raise ValueError(f"{flag} needs a CUDA GPU (bitsandbytes); drop the flag to train on CPU")
    if trainable:
        raise ValueError(f"{flag} freezes the base in quantized form, so it cannot be trained jointly; "
                         "drop the flag, or train the heads alone (Medusa-1)")
    from transformers import BitsAndBytesConfig

    if model_args.load_in_4bit:
        compute = dtype if dtype != torch.float32 else torch.bfloat16
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    return BitsAndBytesConfig(load_in_8bit=True)


def base_hidden_states(base: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       with_logits: bool = True):
    """(hidden (B,T,H) after the final norm, logits (B,T,V) or None); no autograd through a frozen base."""
    trainable = any(p.requires_grad for p in base.parameters())
    backbone = base.get_decoder() if hasattr(base, "get_decoder") else base.base_model
    with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = base.get_output_embeddings()(hidden) if with_logits else None
    return hidden, logits


# --------------------------------------------------------------------------- data
class _Examples(torch.utils.data.Dataset):
    """Tokenized conversations, each stored without its padding."""

    def __init__(self, convs: list, tokenizer, lazy: bool, workers: int | None = None):
        self.convs, self.tokenizer, self.cache = convs, tokenizer, {}
        if not lazy:
            self.cache = dict(enumerate(_tokenize(convs, tokenizer, workers=workers)))
            self.report_unusable()

    def __len__(self):
        return len(self.convs)

    def __getitem__(self, i):
        if i not in self.cache:
            self.cache[i] = _as_tensors(_tokenize_chunk((self.convs[i:i + 1], self.tokenizer))[0])
        return self.cache[i]

    def report_unusable(self) -> None:
        empty = sum(1 for ex in self.cache.values() if not (ex["labels"] != IGNORE_TOKEN_ID).any())
        if empty:
            print(f"warning: {empty} of {len(self.cache)} conversations have no trainable tokens (FastChat's "
                  "preprocess found a tokenization mismatch, or the first answer lies beyond --model_max_length)",
                  file=sys.stderr)


def _tokenize_chunk(job: tuple) -> list[dict]:
    """FastChat's preprocess on a few conversations; rows are cut to their length."""
    from fastchat.train.train import preprocess

    convs, tokenizer = job
    part = preprocess([c["conversations"] for c in convs], tokenizer)
    lengths = part["attention_mask"].sum(-1).tolist()
    # numpy, not tensors: tensors sent back from a worker process each hold a shared-memory file
    # descriptor, and tens of thousands of them exhaust the process's descriptor limit
    return [{"input_ids": ids[: max(int(n), 1)].numpy().copy(), "labels": labels[: max(int(n), 1)].numpy().copy()}
            for ids, labels, n in zip(part["input_ids"], part["labels"], lengths)]


def _as_tensors(row: dict) -> dict:
    return {key: torch.from_numpy(value) for key, value in row.items()}


def default_workers() -> int:
    """CPU processes for tokenizing: the cores this process may use, shared among local ranks, at most 16."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(16, cores // local_ranks))


def _tokenize(convs: list, tokenizer, workers: int | None = None, chunk: int = 64) -> list[dict]:
    """Every conversation through ``preprocess``, in forked worker processes when there are many."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    jobs = [(convs[i:i + chunk], tokenizer) for i in range(0, len(convs), chunk)]
    workers = min(workers or default_workers(), len(jobs))
    bar = tqdm(total=len(convs), desc="tokenizing", unit="conv", disable=len(jobs) < 4)
    out: list[dict] = []
    if workers <= 1:
        parts = map(_tokenize_chunk, jobs)
    else:  # fork: the children only run the tokenizer, never CUDA
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=torch.set_num_threads, initargs=(1,))  # OpenMP is not fork-safe
        parts = pool.map(_tokenize_chunk, jobs)
    for part in parts:
        out.extend(_as_tensors(row) for row in part)
        bar.update(len(part))
    bar.close()
    if workers > 1:
        pool.shutdown()
    return out


def read_conversations(path: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist; make FastChat JSON with python -m fastchat_spec.train.data")
    with open(path, encoding="utf-8") as f:
        try:
            convs = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); expected FastChat JSON") from None
    if not isinstance(convs, list) or (convs and "conversations" not in convs[0]):
        raise ValueError(f"{path} is not FastChat JSON: expected a list of {{'id', 'conversations': [...]}}")
    return convs


def supervised_dataset(tokenizer, data_path, max_len: int, lazy: bool = False, workers: int | None = None):
    """FastChat JSON (a path or a list) -> dataset of {input_ids, labels}; user turns are IGNORE_TOKEN_ID."""
    convs = read_conversations(data_path) if isinstance(data_path, str) else list(data_path)
    tokenizer.model_max_length = max_len
    return _Examples(convs, tokenizer, lazy, workers)


def training_datasets(tokenizer, data_args: DataArguments):
    """(train, held-out or None): the eval file, else a deterministic split of the training file by id."""
    convs = read_conversations(data_args.data_path)
    if data_args.eval_data_path:
        heldout = read_conversations(data_args.eval_data_path)
    elif data_args.heldout_fraction > 0:
        from fastchat_spec.train.data import is_heldout

        ids = [str(c.get("id", i)) for i, c in enumerate(convs)]
        flags = [is_heldout(i, data_args.heldout_fraction) for i in ids]
        if not any(flags) and len(convs) > 1:  # tiny files: hold out at least one conversation
            flags[-1] = True
        heldout = [c for c, f in zip(convs, flags) if f]
        convs = [c for c, f in zip(convs, flags) if not f]
    else:
        heldout = []
    args = (data_args.model_max_length, data_args.lazy_preprocess, data_args.preprocessing_num_workers)
    train = supervised_dataset(tokenizer, convs, *args)
    held = supervised_dataset(tokenizer, heldout, *args) if heldout else None
    return train, held


@dataclass
class Collator:
    """Right-pads a list of examples to the longest one (rounded up to ``multiple``)."""

    pad_token_id: int
    multiple: int = 8

    def __call__(self, examples: list[dict]) -> dict:
        n = max(len(ex["input_ids"]) for ex in examples)
        n = -(-n // self.multiple) * self.multiple
        ids = torch.full((len(examples), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), n), IGNORE_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros((len(examples), n), dtype=torch.long)
        for i, ex in enumerate(examples):
            k = len(ex["input_ids"])
            ids[i, :k], labels[i, :k], mask[i, :k] = ex["input_ids"], ex["labels"], 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------- losses and accuracy
def shift_labels(labels: torch.Tensor, offset: int) -> torch.Tensor:
    """(B,T) targets for predictions made at each input position ``offset`` tokens ahead."""
    out = torch.full_like(labels, IGNORE_TOKEN_ID)
    if offset < labels.shape[-1]:
        out[..., : labels.shape[-1] - offset] = labels[..., offset:]
    return out


def head_loss(logits: torch.Tensor, targets: torch.Tensor, num_items=None) -> torch.Tensor:
    """Cross-entropy over non-ignored targets: a mean, or a sum / ``num_items`` (HF's global token count)."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1).to(logits.device)
    if num_items is None:
        if not (targets != IGNORE_TOKEN_ID).any():
            return logits.sum() * 0.0  # keeps the graph (DDP) when a batch has no answer tokens
        return nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_TOKEN_ID)
    total = nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_TOKEN_ID, reduction="sum")
    return total / torch.as_tensor(num_items, device=total.device).clamp_min(1)


def shifted_head_loss(logits_k: torch.Tensor, labels: torch.Tensor, offset: int, num_items=None) -> torch.Tensor:
    """Loss of a head whose logits at position t guess the token at t + ``offset``."""
    return head_loss(logits_k, shift_labels(labels, offset), num_items)


def target_ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank (0 = top-1) of each non-ignored target among the logits; (N,) for the N valid targets."""
    logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1).to(logits.device)
    valid = targets != IGNORE_TOKEN_ID
    logits, targets = logits[valid], targets[valid]
    own = logits.gather(-1, targets[:, None])
    return (logits > own).sum(-1)


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict:
    """{k: fraction of valid targets ranked below k} as 0-dim tensors (0 when nothing is valid)."""
    with torch.no_grad():
        ranks = target_ranks(logits.detach(), targets)
        n = max(ranks.numel(), 1)
        return {k: (ranks < k).sum().float() / n for k in ks}


def head_logs(name: str, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, num_items=None,
              ks: Sequence[int] = (1, 5)) -> dict:
    """The standard log entries of one head: ``{name}_loss``, ``{name}_top1``, ``{name}_top5``.

    ``loss`` as returned by ``head_loss``; with ``num_items`` it is turned back
    into this batch's token mean, so logs read the same with any process count.
    """
    loss = loss.detach().float()
    if num_items is not None:
        n = (targets != IGNORE_TOKEN_ID).sum().clamp_min(1)
        loss = loss * torch.as_tensor(num_items, device=loss.device) / n
    logs = {f"{name}_loss": loss}
    logs.update({f"{name}_top{k}": v for k, v in topk_accuracy(logits, targets, ks).items()})
    return logs


# --------------------------------------------------------------------------- trainer
def forward_loss(model, inputs: dict):
    """Default ``loss_fn``: the training module's forward returns ``(loss, logs)``."""
    return model(**inputs)


class _Means:
    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, logs: dict) -> None:
        for k, v in logs.items():
            v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def pop(self, accelerator) -> dict:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        stacked = torch.stack([self.sums[k].to(accelerator.device) for k in keys]) / max(self.count, 1)
        stacked = accelerator.reduce(stacked, reduction="mean")  # every process calls log() together
        self.sums, self.count = {}, 0
        return {k: round(float(v), 4) for k, v in zip(keys, stacked.tolist())}


class HeadTrainer(transformers.Trainer):
    """A Trainer whose loss comes from ``loss_fn(model, inputs) -> (loss, logs)``.

    ``loss_fn`` must call ``model(...)`` (the wrapped model) once, so DDP, FSDP
    and DeepSpeed see the forward. ``inputs`` carries ``num_items_in_batch``
    during training. Every entry of ``logs`` is averaged over the logging
    interval (and processes) and appears in the Trainer's logs; during
    evaluation the same entries appear as ``eval_<name>``. ``lr_multipliers``
    maps parameter-name prefixes of the training module (``"heads."``) to a
    factor on ``learning_rate`` (e.g. Medusa-2's faster heads).
    """

    def __init__(self, *args, loss_fn: Callable = forward_loss, lr_multipliers: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.lr_multipliers = dict(lr_multipliers or {})
        # We divide by the Trainer's global token count ourselves (see the module doc).
        self.model_accepts_loss_kwargs = True
        self._means = {"train": _Means(), "eval": _Means()}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        if num_items_in_batch is not None and model.training:
            inputs["num_items_in_batch"] = num_items_in_batch
        loss, logs = self.loss_fn(model, inputs)
        self._means["train" if model.training else "eval"].add(logs)
        if (num_items_in_batch is not None and model.training and self.args.average_tokens_across_devices):
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is global
        return (loss, logs) if return_outputs else loss

    def create_optimizer(self):
        if self.optimizer is not None or not self.lr_multipliers:
            return super().create_optimizer()
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        decay = set(self.get_decay_parameter_names(self.model))
        groups: dict[tuple, list] = {}
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                factor = next((m for p, m in self.lr_multipliers.items() if name.startswith(p)), 1.0)
                groups.setdefault((factor, name in decay), []).append(param)
        self.optimizer = optimizer_cls(
            [{"params": params, "lr": self.args.learning_rate * factor,
              "weight_decay": self.args.weight_decay if decays else 0.0}
             for (factor, decays), params in groups.items()], **optimizer_kwargs)
        return self.optimizer

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            logs = {**logs, **self._means["train"].pop(self.accelerator)}
        super().log(logs, *args, **kwargs)

    def evaluation_loop(self, *args, **kwargs):
        self._means["eval"] = _Means()
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        output.metrics.update({f"{prefix}_{k}": v for k, v in self._means["eval"].pop(self.accelerator).items()})
        return output


# --------------------------------------------------------------------------- held-out accuracy
@torch.no_grad()
def evaluate_heads(model: nn.Module, dataset, predict_fn: Callable, collator: Callable, device=None,
                   batch_size: int = 8, max_rank: int = 10, names: Sequence[str] | None = None,
                   print_table: bool = True, desc: str = "held-out accuracy") -> dict:
    """Held-out hits of every head, token-weighted and summed over processes.

    ``predict_fn(model, batch) -> [(logits (..., V), targets (...)), ...]`` per head
    (targets aligned with the logits, ``IGNORE_TOKEN_ID`` where there is none).
    Returns ``{"heads": {name: {"top1", "top5", "tokens"}}, "rank_accuracy": acc}``
    with ``acc[depth][rank]`` = share of tokens whose right answer is that head's
    rank-th candidate (the input of ``fastchat_spec.generate.tree.build_tree``).
    Every process evaluates its own shard of ``dataset``.
    """
    from tqdm import tqdm

    device = device or next(model.parameters()).device
    rank, world = _dist_rank_world()
    # Every process runs the same number of batches (sharded models gather weights in lockstep);
    # a shard that is one short repeats its first example with no targets.
    per_process = -(-len(dataset) // world)
    indices = list(range(rank, len(dataset), world))
    filler = per_process - len(indices)
    was_training = model.training
    model.eval()
    hits, tokens = None, None
    for start in tqdm(range(0, per_process, batch_size), desc=desc, disable=rank != 0):
        examples = [dataset[i] for i in indices[start:start + batch_size]]
        pad = min(batch_size - len(examples), filler)
        examples += [_without_targets(dataset[0])] * max(pad, 0)
        batch = collator(examples)
        batch = {k: v.to(device) for k, v in batch.items()}
        preds = predict_fn(model, batch)
        if hits is None:
            hits = torch.zeros(len(preds), max_rank, dtype=torch.float64, device=device)
            tokens = torch.zeros(len(preds), dtype=torch.float64, device=device)
        for h, (logits, targets) in enumerate(preds):
            ranks = target_ranks(logits, targets)
            tokens[h] += ranks.numel()
            hits[h] += torch.bincount(ranks[ranks < max_rank], minlength=max_rank).to(hits.dtype)
    model.train(was_training)
    if hits is None:
        raise ValueError("evaluate_heads got an empty dataset; pass held-out conversations (--eval_data_path)")
    if world > 1:
        torch.distributed.all_reduce(hits)
        torch.distributed.all_reduce(tokens)
    acc = (hits / tokens.clamp_min(1)[:, None]).tolist()
    names = list(names or [f"head{h}" for h in range(len(acc))])
    result = {"heads": {}, "rank_accuracy": acc}
    for name, row, n in zip(names, acc, tokens.tolist()):
        result["heads"][name] = {"top1": round(sum(row[:1]), 4), "top5": round(sum(row[:5]), 4), "tokens": int(n)}
    if print_table and rank == 0:
        print(format_head_table(result["heads"]))
    return result


def _without_targets(example: dict) -> dict:
    return {**example, "labels": torch.full_like(example["labels"], IGNORE_TOKEN_ID)}


def format_head_table(heads: dict) -> str:
    lines = [f"{'head':<10}{'top-1':>8}{'top-5':>8}{'tokens':>10}"]
    for name, m in heads.items():
        lines.append(f"{name:<10}{m['top1']:>8.3f}{m['top5']:>8.3f}{m['tokens']:>10d}")
    return "\n".join(lines)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------- saving
def gathered_state_dict(trainer: transformers.Trainer) -> dict:
    """The full state dict of the training module (collective: call on every process)."""
    return trainer.accelerator.get_state_dict(trainer.model)


def save_and_report(trainer: transformers.Trainer, out_dir: str, write_checkpoint: Callable[[dict, str], None],
                    report: dict) -> dict | None:
    """Gather the weights, let the main process write the checkpoint and ``train_report.json``.

    ``write_checkpoint(state_dict, out_dir)`` gets the training module's full
    state dict on CPU. The report gets the command line, the Trainer's log
    history and the arguments added. Returns the report on the main process.
    """
    state = gathered_state_dict(trainer)
    result = None
    if trainer.is_world_process_zero():
        state = {k: v.detach().cpu() for k, v in state.items()}
        os.makedirs(out_dir, exist_ok=True)
        write_checkpoint(state, out_dir)
        result = {
            "command": " ".join([os.path.basename(sys.executable), "-m", _module_name()] + sys.argv[1:]),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "world_size": trainer.args.world_size,
            **report,
            "log_history": trainer.state.log_history,
            "training_args": trainer.args.to_dict(),
        }
        with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
    trainer.accelerator.wait_for_everyone()
    return result


def kl_to_teacher(logits: torch.Tensor, teacher_logits: torch.Tensor, num_items=None) -> torch.Tensor:
    """KL(teacher || student) summed over positions, divided by num_items (or their count)."""
    student = torch.log_softmax(logits.float(), -1)
    teacher = torch.log_softmax(teacher_logits.float(), -1)
    total = nn.functional.kl_div(student, teacher, log_target=True, reduction="sum")
    n = num_items if num_items is not None else max(logits.shape[0], 1)
    return total / torch.as_tensor(n, device=total.device).clamp_min(1)


def checkpoint_conv_template(base_path: str) -> str | None:
    """The template the base is served with: its config's, else the one FastChat picks for it."""
    name = base_conv_template(base_path)
    if name:
        return name
    from fastchat.model.model_adapter import get_conversation_template

    return get_conversation_template(base_path).name


def base_reference(base_path: str, out_dir: str, style: str) -> str:
    """How a checkpoint names its base: a hub id as is, a local folder relative to the checkpoint or absolute."""
    if not os.path.isdir(base_path):
        return base_path  # a hub id
    if style == "absolute":
        return os.path.abspath(base_path)
    return os.path.relpath(os.path.abspath(base_path), os.path.abspath(out_dir))


def measure_heads(trainer: transformers.Trainer, heldout, predict_fn: Callable, num_heads: int, num_nodes: int,
                  heads_key: str = "heads", tree_key: str = "tree") -> dict:
    """After training: held-out loss, per-head top-k and the tree grown from them (the default tree
    without held-out data), as report entries (``eval``, ``heads_key``, ``rank_accuracy``, ``tree_key``,
    ``expected_tokens_per_step``)."""
    out, accuracy = {}, None
    if heldout is not None:
        out["eval"] = trainer.evaluate()
        accuracy = evaluate_heads(trainer.accelerator.unwrap_model(trainer.model), heldout, predict_fn,
                                  trainer.data_collator, batch_size=trainer.args.per_device_eval_batch_size)
    tree, expected = grown_tree(accuracy, num_heads, num_nodes)
    out.update({heads_key: accuracy["heads"] if accuracy else None,
                "rank_accuracy": accuracy["rank_accuracy"] if accuracy else None,
                tree_key: tree, "expected_tokens_per_step": expected})
    return out


def print_written(out_dir: str, report: dict | None) -> None:
    """On the main process (``report`` is not None): where the checkpoint went and its tree's expected tau."""
    if report is None:
        return
    expected = report.get("expected_tokens_per_step")
    print(f"wrote {out_dir}" + (f" (expected tokens/step with its tree: {expected:.2f})" if expected else ""))


def grown_tree(accuracy: dict | None, num_heads: int, num_nodes: int):
    """(tree paths, expected tokens per step) grown from held-out rank accuracies; the default tree without them."""
    from fastchat_spec.generate.tree import build_tree, default_tree, expected_length

    if accuracy is None:  # nothing held out: the engine's assumed profile
        return default_tree(num_heads, num_nodes).to_list(), None
    tree = build_tree(accuracy["rank_accuracy"], num_nodes)
    return tree.to_list(), round(expected_length(tree, accuracy["rank_accuracy"]), 4)


def stored_dtype(config) -> torch.dtype:
    """The dtype a checkpoint's config says its weights were saved in; float32 when unknown."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else os.path.basename(sys.argv[0])


def copy_tokenizer_files(src: str, dst: str) -> None:
    """Tokenizer files of the base folder next to a heads-only checkpoint (FastChat loads them from there)."""
    import shutil

    if not os.path.isdir(src):
        return
    for name in os.listdir(src):
        if name.startswith(("tokenizer", "special_tokens_map", "added_tokens")) or name.endswith(".model"):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def base_conv_template(base_path: str) -> str | None:
    """The base folder's ``fastchat_conv_template`` (our base models record one), if any."""
    from fastchat_spec.adapters.checkpoint import read_config

    config = read_config(base_path) if os.path.isdir(base_path) else None
    return (config or {}).get("fastchat_conv_template")
