"""Train a Vicuna-style Llama from scratch on FastChat JSON: the reference base model.

References:
- Vicuna / FastChat ``fastchat/train/train.py``: conversations rendered with the
  vicuna_v1.1 template and the loss kept on assistant replies only. We import
  its ``preprocess`` for tokenisation and masking rather than copy it.
- Llama (Touvron et al., 2023) through ``transformers.LlamaForCausalLM``:
  RMSNorm, SwiGLU, rotary positions; untied input and output embeddings as in
  Llama. The sizes are data (``SIZES``).
- Hugging Face ``Trainer``/``TrainingArguments``, so every HF flag, torchrun,
  accelerate and DeepSpeed work unchanged.

Efficiency: conversations go through the trainers' shared pipeline
(``dataset.py``: FastChat's ``preprocess``, padding cut off once), are batched
by similar length (``group_by_length``) and padded only to the longest in each
batch, with no attention mask so that SDPA runs its fused causal kernel
(``dataset.Collator``). Conversations with nothing to learn are dropped.

Usage: ``python -m fastchat_spec.train.base --help``.
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from fastchat_spec.train.arguments import flag_given
from fastchat_spec.train.checkpoint import SAVE_DTYPES
from fastchat_spec.train.dataset import Collator, TokenizedConversations, tokenize_conversations, trainable_rows
from fastchat_spec.train.trainer import saving_on_sigterm, train_until_stopped

FASTCHAT_TEMPLATE = "vicuna_v1.1"

# LlamaConfig keyword arguments per size; vocab size and special ids come from the tokenizer.
# nano with an 8k vocab: 7.3M parameters, 14.5 MB in fp16 (small enough to bundle).
# small with an 8k vocab: 104M parameters.
SIZES: Dict[str, Dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=2),
    "nano": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4),
    "small": dict(hidden_size=768, intermediate_size=2304, num_hidden_layers=12, num_attention_heads=12),
}

# Flags put before the user's, so anything given on the command line wins.
COMMON_DEFAULTS: Dict[str, str] = {
    "lr_scheduler_type": "cosine",
    "warmup_ratio": "0.03",
    "weight_decay": "0.1",
    "adam_beta2": "0.95",
    "max_grad_norm": "1.0",
    "logging_steps": "20",
    "save_strategy": "no",
    "report_to": "none",
    "group_by_length": "True",
    "remove_unused_columns": "False",
    "dataloader_num_workers": "2",
}
SIZE_DEFAULTS: Dict[str, Dict[str, str]] = {
    "tiny": {"learning_rate": "3e-3", "per_device_train_batch_size": "8", "num_train_epochs": "1", "model_max_length": "256"},
    "nano": {"learning_rate": "2e-3", "per_device_train_batch_size": "64", "num_train_epochs": "5", "model_max_length": "512"},
    "small": {"learning_rate": "1e-3", "per_device_train_batch_size": "32", "num_train_epochs": "2", "model_max_length": "1024"},
}
CUDA_DEFAULTS: Dict[str, str] = {"bf16": "True", "tf32": "True", "optim": "adamw_torch_fused"}
CPU_DEFAULTS: Dict[str, str] = {"dataloader_pin_memory": "False"}


@dataclass
class ModelArguments:
    size: str = field(default="nano", metadata={"help": "model size: " + ", ".join(SIZES), "choices": list(SIZES)})
    tokenizer: Optional[str] = field(
        default=None,
        metadata={"help": "tokenizer folder from `python -m fastchat_spec.train.tokenizer` (required)"},
    )
    max_position_embeddings: int = field(
        default=2048, metadata={"help": "rotary position limit saved in config.json (at least model_max_length)"}
    )
    save_dtype: str = field(
        default="float16",
        metadata={"help": "dtype of model.safetensors: " + ", ".join(SAVE_DTYPES), "choices": list(SAVE_DTYPES)},
    )


@dataclass
class DataArguments:
    data_path: Optional[str] = field(
        default=None, metadata={"help": "FastChat JSON to train on, from `python -m fastchat_spec.train.data` (required)"}
    )
    eval_data_path: Optional[str] = field(
        default=None, metadata={"help": "FastChat JSON for the held-out loss, e.g. data/sharegpt/heldout.json"}
    )
    model_max_length: Optional[int] = field(
        default=None,
        metadata={"help": "tokens per conversation, longer ones truncated (default by --size: 256, 512, 1024)"},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "use only the first N training conversations (quick runs)"}
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None,
        metadata={"help": "processes for tokenisation (default: the CPU cores, shared by local ranks, at most 16)"},
    )


@dataclass
class TrainResult:
    """What ``main`` measured; also printed."""

    output_dir: str
    num_parameters: int
    train_loss: float  # mean over the whole run
    final_loss: Optional[float]  # last logged training loss
    eval_loss: Optional[float]
    tokens_per_second: float  # non-padding tokens
    train_seconds: float
    log_history: List[Dict] = field(default_factory=list)
    stopped_by_sigterm_at_step: Optional[int] = None  # None: trained to the end


# ---------------------------------------------------------------- model


def llama_config(
    size: str,
    vocab_size: int,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    pad_token_id: int = 0,
    max_position_embeddings: int = 2048,
):
    """``LlamaConfig`` of ``SIZES[size]``; the defaults are our tokenizer's ids (pad = unk = 0)."""
    from transformers import LlamaConfig

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,  # as in Llama; costs vocab * hidden extra parameters
        rms_norm_eps=1e-5,
        attn_implementation="sdpa",
        **SIZES[size],
    )
    config.fastchat_conv_template = FASTCHAT_TEMPLATE
    return config


def parameter_count(size: str, vocab_size: int) -> int:
    """Parameters of a size without allocating it (built on the meta device)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(llama_config(size, vocab_size)).num_parameters()


def build_base_model(size: str, tokenizer, max_position_embeddings: int = 2048):
    """A randomly initialised ``LlamaForCausalLM`` of ``SIZES[size]`` matching ``tokenizer``'s ids."""
    from transformers import LlamaForCausalLM

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
    config = llama_config(
        size,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
        max_position_embeddings=max_position_embeddings,
    )
    return LlamaForCausalLM(config)


# ---------------------------------------------------------------- arguments


def _peek_size(argv: List[str]) -> str:
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--size", default="nano", choices=list(SIZES))
    known, _ = peek.parse_known_args(argv)
    return known.size


def default_flags(size: str, argv: List[str], cuda_bf16: bool) -> List[str]:
    """Size- and device-dependent defaults as flags, to be placed before ``argv``."""
    defaults = {**COMMON_DEFAULTS, **SIZE_DEFAULTS[size]}
    if cuda_bf16 and not any(a.startswith("--fp16") for a in argv):
        defaults.update(CUDA_DEFAULTS)
    if not torch.cuda.is_available():
        defaults.update(CPU_DEFAULTS)
    flags: List[str] = []
    for name, value in defaults.items():
        flags += [f"--{name}", value]
    return flags


def _describe_defaults() -> str:
    sizes = "; ".join(
        f"{name}: " + ", ".join(f"{k}={v}" for k, v in SIZE_DEFAULTS[name].items()) for name in SIZES
    )
    common = ", ".join(f"{k}={v}" for k, v in COMMON_DEFAULTS.items())
    cuda = ", ".join(f"{k}={v}" for k, v in CUDA_DEFAULTS.items())
    return f"Defaults by --size ({sizes}). Always: {common}. On a bf16 GPU: {cuda}. Any flag you give wins."


def make_parser():
    from transformers import HfArgumentParser, TrainingArguments

    return HfArgumentParser(
        (ModelArguments, DataArguments, TrainingArguments),
        prog="python -m fastchat_spec.train.base",
        description=(
            "Train a Vicuna-style LlamaForCausalLM from scratch on FastChat JSON (loss on assistant "
            "turns only, FastChat's preprocess) with the Hugging Face Trainer. Needs --tokenizer, "
            "--data_path and --output_dir; takes every Hugging Face TrainingArguments flag. "
            "Name the output folder with 'vicuna' in it (e.g. runs/vicuna-nano) so FastChat picks "
            "the vicuna_v1.1 template. " + _describe_defaults()
        ),
    )


def parse_arguments(argv: Optional[List[str]] = None):
    """(ModelArguments, DataArguments, TrainingArguments) with size defaults applied."""
    argv = list(sys.argv[1:] if argv is None else argv)
    size = _peek_size(argv)
    cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    parser = make_parser()
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(
        default_flags(size, argv, cuda_bf16) + argv
    )
    _check_arguments(parser, model_args, data_args, argv)
    return model_args, data_args, training_args


def _check_arguments(parser, model_args: ModelArguments, data_args: DataArguments, argv: List[str]) -> None:
    if not model_args.tokenizer:
        parser.error("--tokenizer DIR is required: train one with `python -m fastchat_spec.train.tokenizer`")
    if not data_args.data_path:
        parser.error("--data_path is required: write it with `python -m fastchat_spec.train.data --out-dir DIR`")
    if not flag_given(argv, "output_dir"):
        parser.error("--output_dir is required, e.g. --output_dir runs/vicuna-nano")
    for flag, path in (("--data_path", data_args.data_path), ("--eval_data_path", data_args.eval_data_path)):
        if path and not os.path.isfile(path):
            parser.error(f"{flag} {path} does not exist; write it with `python -m fastchat_spec.train.data`")
    if data_args.model_max_length > model_args.max_position_embeddings:
        parser.error(
            f"--model_max_length {data_args.model_max_length} exceeds --max_position_embeddings "
            f"{model_args.max_position_embeddings}; raise --max_position_embeddings"
        )


# ---------------------------------------------------------------- run


def _enable_fast_matmul() -> None:
    """TF32 for any fp32 matmul left outside bf16 autocast (no effect on CPU)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _load_split(path: str, tokenizer, data_args: DataArguments, limit: Optional[int], verbose: bool, what: str):
    from fastchat_spec.train.data import read_fastchat_json

    convs = read_fastchat_json(path)[:limit]
    rows = tokenize_conversations(convs, tokenizer, data_args.preprocessing_num_workers, progress=verbose)
    rows, stats = trainable_rows(rows, tokenizer.model_max_length)
    dataset = TokenizedConversations(rows)
    if verbose:
        print(
            f"{what}: {stats.kept:,} of {len(convs):,} conversations, {dataset.num_tokens():,} tokens; "
            f"skipped {stats.unusable(tokenizer.model_max_length)}"
        )
    if len(dataset) == 0:
        raise ValueError(f"{path}: no conversation with an assistant reply survived tokenisation; check the file")
    return dataset


def _load_tokenizer(model_args: ModelArguments, data_args: DataArguments):
    from fastchat_spec.train.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_args.tokenizer)
    tokenizer.model_max_length = data_args.model_max_length
    tokenizer.padding_side = "right"
    if tokenizer.pad_token != tokenizer.unk_token:  # FastChat's convention
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def save_model_folder(trainer, tokenizer, output_dir: str, save_dtype: str) -> None:
    """config.json (with fastchat_conv_template), model.safetensors in ``save_dtype``, tokenizer files."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True
    model.config.fastchat_conv_template = FASTCHAT_TEMPLATE
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        trainer.save_model(output_dir)  # gathers sharded weights; keeps the training dtype
    elif trainer.is_world_process_zero():
        model.to(SAVE_DTYPES[save_dtype]).save_pretrained(output_dir, safe_serialization=True)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        trainer.save_state()


def _last_logged_loss(log_history: List[Dict]) -> Optional[float]:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return losses[-1] if losses else None


@saving_on_sigterm()
def main(argv: Optional[List[str]] = None) -> TrainResult:
    """Command line entry point (``argv`` as a list for in-process use); returns the measurements."""
    from transformers import Trainer

    model_args, data_args, training_args = parse_arguments(argv)
    _enable_fast_matmul()
    verbose = training_args.process_index == 0
    tokenizer = _load_tokenizer(model_args, data_args)
    train_set = _load_split(data_args.data_path, tokenizer, data_args, data_args.max_train_samples, verbose, "train")
    eval_set = None
    if data_args.eval_data_path:
        eval_set = _load_split(data_args.eval_data_path, tokenizer, data_args, None, verbose, "held-out")

    model = build_base_model(model_args.size, tokenizer, model_args.max_position_embeddings)
    n_params = model.num_parameters()
    if verbose:
        print(f"model: {model_args.size}, {n_params / 1e6:.1f}M parameters, vocab {len(tokenizer)}")
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=Collator(tokenizer.pad_token_id, attention_mask=False),
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    train_output, stopped_at = train_until_stopped(trainer)
    seconds = time.perf_counter() - start
    tokens_per_second = train_set.num_tokens() * trainer.state.epoch / seconds
    eval_loss = trainer.evaluate()["eval_loss"] if eval_set is not None else None
    save_model_folder(trainer, tokenizer, training_args.output_dir, model_args.save_dtype)

    result = TrainResult(
        output_dir=training_args.output_dir,
        num_parameters=n_params,
        train_loss=train_output.training_loss,
        final_loss=_last_logged_loss(trainer.state.log_history),
        eval_loss=eval_loss,
        tokens_per_second=tokens_per_second,
        train_seconds=seconds,
        log_history=list(trainer.state.log_history),
        stopped_by_sigterm_at_step=stopped_at,
    )
    if verbose:
        _print_summary(result)
    return result


def _print_summary(result: TrainResult) -> None:
    final = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    held = f"{result.eval_loss:.4f}" if result.eval_loss is not None else "n/a (no --eval_data_path)"
    print(
        f"trained {result.num_parameters / 1e6:.1f}M parameters in {result.train_seconds:.1f} s at "
        f"{result.tokens_per_second:,.0f} non-padding tokens/s; mean train loss {result.train_loss:.4f}, "
        f"final logged loss {final}; held-out loss {held}; saved {result.output_dir}"
    )


if __name__ == "__main__":
    main()
