"""Losses and accuracies of draft heads, on labels aligned with ``input_ids``.

Offsets: ``labels[t]`` is ``input_ids[t]`` or ``IGNORE_TOKEN_ID``. The base's
lm_head at position ``t`` predicts offset 1; Medusa head ``k`` (0-based)
predicts offset ``k + 2`` (``shift_labels(labels, k + 2)``).

Loss scaling: the Trainer counts the trainable label tokens of the whole
optimizer step (all micro-batches, all processes) and hands the count to
``compute_loss`` as ``num_items_in_batch``; losses are token sums divided by
that count, so N processes with batch b give the same update as one process
with batch N*b. Without the count a loss is a mean over its own tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastchat_spec.train.dataset import IGNORE_TOKEN_ID


def shift_labels(labels: torch.Tensor, offset: int) -> torch.Tensor:
    """(B,T) targets for predictions made at each input position ``offset`` tokens ahead."""
    out = torch.full_like(labels, IGNORE_TOKEN_ID)
    if offset < labels.shape[-1]:
        out[..., : labels.shape[-1] - offset] = labels[..., offset:]
    return out


def per_item(total: torch.Tensor, num_items, count: int) -> torch.Tensor:
    """``total`` divided by the Trainer's global token count, or by ``count`` (this batch's) without one."""
    n = num_items if num_items is not None else max(count, 1)
    return total / torch.as_tensor(n, device=total.device).clamp_min(1)


def head_loss(logits: torch.Tensor, targets: torch.Tensor, num_items=None) -> torch.Tensor:
    """Cross-entropy over non-ignored targets: a mean, or a sum / ``num_items`` (HF's global token count)."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1).to(logits.device)
    if num_items is None:
        if not (targets != IGNORE_TOKEN_ID).any():
            return logits.sum() * 0.0  # keeps the graph (DDP) when a batch has no answer tokens
        return nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_TOKEN_ID)
    total = nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_TOKEN_ID, reduction="sum")
    return per_item(total, num_items, 1)


def kl_to_teacher(logits: torch.Tensor, teacher_logits: torch.Tensor, num_items=None) -> torch.Tensor:
    """KL(teacher || student) summed over positions, divided by num_items (or their count)."""
    student = torch.log_softmax(logits.float(), -1)
    teacher = torch.log_softmax(teacher_logits.float(), -1)
    total = nn.functional.kl_div(student, teacher, log_target=True, reduction="sum")
    return per_item(total, num_items, logits.shape[0])


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
