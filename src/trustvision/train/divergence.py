"""When a run has diverged, and how that is recorded: a non-finite weight or evaluation loss
after an epoch (the training loss is checked before every step, in `loop.train_step`), and a
summary that says where it happened and which checkpoint survives."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from trustvision.errors import DivergenceError
from trustvision.runs import RunDir
from trustvision.train import checkpoint as ckpt


def non_finite(model: nn.Module, record: dict[str, Any]) -> str | None:
    """What is not finite after an epoch, a weight or the loss of an evaluation, else None.

    The training loss is checked before every step; a step can still leave infinite weights,
    and weights that overflow only in evaluation give NaN losses there."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"the weights `{name}` are no longer finite"
    for key in ("val_loss", "test_loss"):
        value = record.get(key)
        if value is not None and not np.isfinite(value):
            return f"the {key.replace('_', ' ')} is {value}"
    return None


def diverged(run: RunDir, err: DivergenceError, *, unit: str, number: int) -> DivergenceError:
    """Record a run that diverged in `unit` `number` (epoch 3, round 7) and say which
    checkpoint survives and what to try."""
    latest = ckpt.latest_checkpoint(run.checkpoints_dir)
    kept = f"the last good checkpoint is `{latest}`" if latest else "no checkpoint was written yet"
    message = (
        f"training diverged in {unit} {number}: {err}; {kept}. "
        "Lower `optim.lr` or set `optim.grad_clip` and start again."
    )
    run.write_summary({"status": "diverged", "error": message, unit: number})
    return DivergenceError(message)
