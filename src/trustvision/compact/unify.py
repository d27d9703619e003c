"""Unification: one deployed model built from the two trained branches, with a new head.

`augmented` keeps the body of the branch trained on augmented images, `original` the other
one, `average` averages the two bodies weight by weight (they started from the same
weights) and re-estimates the BatchNorm statistics of the averaged network. In every mode
the head is replaced by a fresh one, and the model has one branch's parameter count.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from trustvision.compact.config import UnifyMode
from trustvision.compact.dual import DualModel
from trustvision.models.base import ImageClassifier


def average_states(first: dict[str, Tensor], second: dict[str, Tensor]) -> dict[str, Tensor]:
    """The mean of two state dicts of one architecture; integer buffers are taken from `first`."""
    if first.keys() != second.keys():
        raise ValueError("the two state dicts have different keys")
    return {
        key: (value + second[key]) / 2 if value.is_floating_point() else value.clone()
        for key, value in first.items()
    }


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> int:
    """Replace every BatchNorm's running statistics by their average over `batches`."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    was_training, seen = model.training, 0
    model.train()
    for x, _ in batches:
        model(x)
        seen += 1
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return seen


def unify(
    dual: DualModel,
    *,
    mode: UnifyMode,
    num_classes: int,
    bn_batches: Iterable[tuple[Tensor, Tensor]] = (),
) -> ImageClassifier:
    """The deployed model: the branch body chosen by `mode` (or both averaged) and a new head.

    `bn_batches` (training batches) re-estimate the BatchNorm statistics in `average` mode.
    The new head is drawn from torch's global RNG: seed it for a reproducible result.
    """
    source = dual.original if mode == "original" else dual.augmented
    model = copy.deepcopy(source)
    if mode == "average":
        model.load_state_dict(
            average_states(dual.original.state_dict(), dual.augmented.state_dict())
        )
        recalibrate_bn(model, bn_batches)
    model.reset_head(num_classes)
    return model
