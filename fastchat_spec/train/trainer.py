"""The Hugging Face Trainer for draft heads, and the base model the heads are trained on.

A method module writes a ``TrainingModule`` that holds the base and its heads
and whose ``forward(input_ids, attention_mask, labels, num_items_in_batch=None)``
returns ``(loss, logs)`` (``logs``: name -> 0-dim tensor, e.g. ``head0_loss``,
``head0_top1``); ``HeadTrainer`` trains it and logs every entry of ``logs``.
``load_base`` loads the base frozen (or trainable, for Medusa-2 and CLLM) and
``base_hidden_states`` runs it without autograd when it is frozen.
``train_until_stopped`` runs any of our Trainers so that SIGTERM ends training
after the current step; within ``saving_on_sigterm`` (each trainer's whole run)
the run then goes on to measure and save what it has learnt.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable

import torch
import transformers
from torch import nn


# --------------------------------------------------------------------------- base model
def load_base(model_args, training_args, trainable: bool = False, max_len: int | None = None):
    """(base, tokenizer) for ``arguments.ModelArguments``. A frozen base loads in the training dtype;
    a trainable one in fp32 (autocast)."""
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


def _quantization_config(model_args, dtype, trainable: bool):
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


class TrainingModule(nn.Module):
    """What ``HeadTrainer`` trains: ``self.base`` and the method's heads; ``forward`` returns ``(loss, logs)``."""

    @property
    def quantization_method(self):  # the Trainer must not .to() a bitsandbytes base
        return getattr(self.base, "quantization_method", None)


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
    during training (see ``losses`` on how losses use it). Every entry of
    ``logs`` is averaged over the logging interval (and processes) and appears
    in the Trainer's logs; during evaluation the same entries appear as
    ``eval_<name>``. ``lr_multipliers`` maps parameter-name prefixes of the
    training module (``"heads."``) to a factor on ``learning_rate`` (e.g.
    Medusa-2's faster heads).
    """

    def __init__(self, *args, loss_fn: Callable = forward_loss, lr_multipliers: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.lr_multipliers = dict(lr_multipliers or {})
        # We divide by the Trainer's global token count ourselves (see losses.py).
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

    def evaluation_loop(self, dataloader, *args, **kwargs):
        workers_ignore_sigterm(dataloader)  # an evaluation during training must survive the group's SIGTERM too
        self._means["eval"] = _Means()
        output = super().evaluation_loop(dataloader, *args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[3] if len(args) > 3 else "eval")
        output.metrics.update({f"{prefix}_{k}": v for k, v in self._means["eval"].pop(self.accelerator).items()})
        return output


# --------------------------------------------------------------------------- stopping early
class StopOnSignal(transformers.TrainerCallback):
    """Ends training after the step in which ``handler`` recorded a stop signal; every process stops at the
    same step. ``handler`` None (off the main thread, where no signal handler can be set): never stops."""

    def __init__(self, handler: "DeferredSigterm | None"):
        self.handler = handler
        self.stopped_at_step: int | None = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is not None:
            workers_ignore_sigterm(train_dataloader)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_process_received(args.device):
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
        return control

    def _any_process_received(self, device) -> bool:
        received = self.handler is not None and self.handler.received is not None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(received)], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            received = bool(flag.item())
        return received


def workers_ignore_sigterm(dataloader) -> None:
    """Makes ``dataloader``'s worker processes ignore SIGTERM (call it before the loader is iterated).

    ``timeout`` and batch schedulers signal the whole process group. PyTorch's workers die of a SIGTERM that
    does not come from their parent, and the trainer then fails ("DataLoader worker is killed by signal:
    Terminated") before it can save. The trainer alone decides when to stop; its workers still exit with it
    (PyTorch's watchdog ends a worker whose parent is gone).
    """
    dataloader = getattr(dataloader, "base_dataloader", dataloader)  # accelerate's adapter iterates the one inside
    init = getattr(dataloader, "worker_init_fn", None)
    if getattr(dataloader, "num_workers", 0) == 0 or getattr(init, "func", None) is _worker_ignoring_sigterm:
        return
    dataloader.worker_init_fn = functools.partial(_worker_ignoring_sigterm, init)


def _worker_ignoring_sigterm(init: Callable | None, worker_id: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if init is not None:
        init(worker_id)


class DeferredSigterm:
    """The SIGTERM handler of ``saving_on_sigterm``: the first signal is recorded (``received``), a second one
    stops the process at once."""

    def __init__(self):
        self.received: int | None = None

    def __call__(self, signum, frame):
        if self.received is not None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
        self.received = signum
        # os.write, not print: the handler runs between two bytecodes of the main thread, which may be inside
        # a print of the Trainer's logs, and print is not reentrant (as web/stopping.py says).
        os.write(sys.stderr.fileno(), b"SIGTERM: training stops after this step (or has ended), then the run "
                                      b"saves what it has (send it again to stop at once)\n")


@contextlib.contextmanager
def saving_on_sigterm():
    """Within the block a scheduler's or ``timeout``'s SIGTERM does not lose the run: ``train_until_stopped``
    ends training after the current step and the rest of the block (measuring, saving) goes on. Wrap a
    trainer's whole train-measure-save in it: a signal that came after training used to kill the run before it
    saved (H100, 2026-12-07: Chimera's heads, stopped while measuring). Yields the ``DeferredSigterm`` (an
    enclosing block's, when nested), or None off the main thread, where Python sets no signal handlers.
    Usable as a decorator: ``@saving_on_sigterm()``."""
    current = signal.getsignal(signal.SIGTERM)
    if isinstance(current, DeferredSigterm):
        yield current
        return
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    handler = DeferredSigterm()
    signal.signal(signal.SIGTERM, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, current)


def train_until_stopped(trainer: transformers.Trainer) -> tuple:
    """(``trainer.train()``'s output, the step at which SIGTERM stopped it or None).

    Within ``saving_on_sigterm`` (its own, unless the caller's block encloses it), a SIGTERM ends training after
    the current step and the caller saves the weights as usual. A second SIGTERM stops the process at once.
    """
    with saving_on_sigterm() as handler:
        callback = StopOnSignal(handler)
        trainer.add_callback(callback)
        try:
            output = trainer.train()
        finally:
            trainer.remove_callback(callback)
        return output, callback.stopped_at_step
