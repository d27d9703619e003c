"""Stage 1: the dual-input-output model, its paired batches and its two-loss objective.

Two branches of one architecture, each with its own weights and head. The `original` branch
sees a batch as it is, the `augmented` branch sees the same images after the random
transform (rotation, zoom, translation, brightness), and the two cross-entropies are summed
with configurable weights. Both branches start from identical weights, so that averaging
them afterwards (one way to unify them) is meaningful.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustvision.data.augment import BatchAugment
from trustvision.data.loader import BatchLoader
from trustvision.errors import ConfigError
from trustvision.models.base import ImageClassifier
from trustvision.train.loop import Objective

BatchMode = Literal["pair", "mixed"]


class DualModel(nn.Module):
    """Two branches of one architecture: `original` and `augmented`, one output each."""

    def __init__(self, original: ImageClassifier, augmented: ImageClassifier) -> None:
        super().__init__()
        self.original = original
        self.augmented = augmented

    def forward(self, x: Tensor, x_augmented: Tensor | None = None) -> Tensor:
        """Both branches on the same images, logits averaged (stage-1 test accuracy); given
        `x_augmented`, the training pair: each branch's logits on its own images, stacked
        (one call, as DistributedDataParallel needs)."""
        if x_augmented is None:
            return (self.original(x) + self.augmented(x)) / 2
        return torch.stack([self.original(x), self.augmented(x_augmented)])

    def branches(self) -> dict[str, ImageClassifier]:
        """The branches by name."""
        return {"original": self.original, "augmented": self.augmented}


def build_dual(model: ImageClassifier) -> DualModel:
    """A dual model whose two branches both start from `model`'s weights (copied)."""
    return DualModel(copy.deepcopy(model), copy.deepcopy(model))


def dual_objective(
    *, weights: tuple[float, float] = (1.0, 1.0), label_smoothing: float = 0.0
) -> Objective:
    """Weighted sum of the branches' cross-entropies; the batch is [originals; augmented]."""
    w_original, w_augmented = weights

    def objective(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x_original, x_augmented = x.chunk(2)
        logits_o, logits_a = model(x_original, x_augmented)
        loss = w_original * F.cross_entropy(logits_o, y, label_smoothing=label_smoothing)
        loss = loss + w_augmented * F.cross_entropy(logits_a, y, label_smoothing=label_smoothing)
        return loss, (logits_o.detach() + logits_a.detach()) / 2

    return objective


class AugmentedBatches(BatchLoader):
    """Training batches with original and augmented views of the same images.

    `pair`: each batch is the B originals followed by their B augmented copies (2B images,
    B labels), for the dual model. `mixed`: B images, each replaced by its augmented copy
    with probability `prob` (the plain baseline and stage 2 see this distribution).
    """

    def __init__(
        self, base: BatchLoader, *, mode: BatchMode, prob: float = 0.5, seed: int = 0
    ) -> None:
        if base.augment is None:
            raise ConfigError(
                "the augmented branch needs a transform: set `data.augment` "
                "(e.g. `data.augment.rotation=10 data.augment.translate=0.1`)"
            )
        super().__init__(
            base.images,
            base.labels,
            batch_size=base.batch_size,
            mean=tuple(base.mean.flatten().tolist()),
            std=tuple(base.std.flatten().tolist()),
            shuffle=True,
            drop_last=True,
            augment=base.augment,
            seed=seed,
            device=base.device,
            normalize=base.normalize,
        )
        self.mode = mode
        self.prob = prob

    def make_batch(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Gather and scale to [0, 1], make the augmented view, then pair or mix, normalise."""
        x = self.images[index].float().div_(255.0)
        augment: BatchAugment | None = self.augment
        augmented = augment(x, generator) if augment is not None and generator else x
        if self.mode == "pair":
            return self.normalized(torch.cat([x, augmented]))
        draw = torch.rand(len(x), device=x.device, generator=generator)
        return self.normalized(torch.where((draw < self.prob).view(-1, 1, 1, 1), augmented, x))
