"""Command lines of the head trainers (Medusa, Hydra, Chimera, CLLM): HF dataclasses plus our defaults.

``parse_args`` builds one ``HfArgumentParser`` from ``ModelArguments``,
``DataArguments``, the method's own dataclass and ``TrainingArguments``, so
every Hugging Face flag works. ``COMMON_DEFAULTS`` (and a method's own) apply
only to flags the user left out: HF's defaults suit LM fine-tuning, not heads.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import transformers


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


def flag_given(argv: Sequence[str], name: str) -> bool:
    """Whether ``argv`` sets ``--name`` (also spelt with dashes, or as ``--name=value``)."""
    forms = {"--" + name, "--" + name.replace("_", "-")}
    return any(a in forms or a.split("=", 1)[0] in forms for a in argv)


def with_defaults(argv: Sequence[str], defaults: dict) -> list[str]:
    """``argv`` plus ``--key value`` for every default whose flag is absent, and the device's defaults."""
    out = list(argv)
    for key, value in defaults.items():
        if not flag_given(argv, key):
            out += ["--" + key, str(value)]
    cuda = torch.cuda.is_available()
    if cuda and torch.cuda.is_bf16_supported() and not (flag_given(argv, "bf16") or flag_given(argv, "fp16")):
        out += ["--bf16", "True"]
    if not cuda:  # CPU runs; under torchrun, DDP over gloo
        cpu = [("dataloader_pin_memory", "False"), ("use_cpu", "True")]
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            cpu.append(("ddp_backend", "gloo"))
        for key, value in cpu:
            if not flag_given(argv, key):
                out += ["--" + key, value]
    return out


def check_one_gpu_per_process(parser: argparse.ArgumentParser, training_args, module: str) -> None:
    """HF's Trainer would fall back to DataParallel with several visible GPUs; we train with torchrun only."""
    if training_args.n_gpu > 1:
        parser.error(f"{training_args.n_gpu} GPUs are visible to one process: launch with "
                     f"torchrun --nproc_per_node={training_args.n_gpu} -m {module} ... "
                     "(or set CUDA_VISIBLE_DEVICES=0)")


def parse_args(method_cls=None, defaults: dict | None = None, argv: Sequence[str] | None = None,
               description: str = "", prog: str | None = None):
    """(model_args, data_args, training_args, method_args or None) from the command line."""
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
    if not flag_given(argv, "output_dir"):
        parser.error("--output_dir is required (the checkpoint folder to write)")
    check_one_gpu_per_process(parser, training_args, prog.split()[-1] if prog else "...")
    return model_args, data_args, training_args, method_args
