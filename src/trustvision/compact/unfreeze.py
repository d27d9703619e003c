"""Stage 2: progressive (gradual) unfreezing and discriminative learning rates, after ULMFiT.

Howard & Ruder (2018): train the head first, then unfreeze one more layer group per stage,
from the top down; each group's learning rate is the one of the group above divided by 2.6.
Layer groups are the model's `layer_groups()` (input -> output, head last). A frozen group
has `requires_grad` off (no gradient, so the optimiser skips it) and BatchNorm momentum 0
(its running statistics stay as they were): its state does not change at all. In training
mode its BatchNorm still normalises by each batch's statistics, as every BatchNorm there does.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from trustvision.errors import ConfigError


def unfreeze_schedule(
    num_groups: int,
    *,
    epochs_per_group: int = 1,
    unfreeze_at: Sequence[int] | None = None,
    epochs: int | None = None,
) -> list[int]:
    """The epoch at which each group becomes trainable, listed input -> output (head last).

    By default the head trains from epoch 0 and one more group joins every `epochs_per_group`
    epochs; given the stage's `epochs`, the groups that would join after its last epoch join
    at the last epoch instead (they would never train). `unfreeze_at` gives the epochs
    explicitly, head first (FinetuneConfig refuses one at or past `epochs`).
    """
    if unfreeze_at is None:
        last = float("inf") if epochs is None else epochs - 1
        top_down = [int(min(k * epochs_per_group, last)) for k in range(num_groups)]
    elif len(unfreeze_at) != num_groups:
        raise ConfigError(
            f"`finetune.unfreeze_at={list(unfreeze_at)}` has {len(unfreeze_at)} entries but the "
            f"model has {num_groups} layer groups: give one epoch per group, head first"
        )
    else:
        top_down = list(unfreeze_at)
    return top_down[::-1]


def all_at_once(num_groups: int) -> list[int]:
    """The schedule without progressive unfreezing: every group trains from epoch 0."""
    return [0] * num_groups


def discriminative_scales(num_groups: int, *, decay: float = 2.6) -> list[float]:
    """Learning-rate scales input -> output: the head gets 1, each group below 1/decay more."""
    return [decay ** -(num_groups - 1 - index) for index in range(num_groups)]


class ProgressiveUnfreezing:
    """A `before_epoch` hook: at each epoch exactly the scheduled groups are trainable."""

    def __init__(self, groups: Sequence[nn.Module], schedule: Sequence[int]) -> None:
        if len(groups) != len(schedule):
            raise ValueError(f"{len(schedule)} schedule entries for {len(groups)} groups")
        self.groups = list(groups)
        self.schedule = list(schedule)
        self.momenta = {
            id(m): m.momentum
            for group in self.groups
            for m in group.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        }

    def trainable(self, epoch: int) -> list[bool]:
        """Which groups train in `epoch`, input -> output."""
        return [epoch >= start for start in self.schedule]

    def __call__(self, epoch: int) -> None:
        """Set `requires_grad` and BatchNorm momentum of every group for `epoch`."""
        for group, on in zip(self.groups, self.trainable(epoch), strict=True):
            set_trainable(group, on, momenta=self.momenta)

    def release(self) -> None:
        """After training: every group trainable again, BatchNorm momenta as they were."""
        for group in self.groups:
            set_trainable(group, True, momenta=self.momenta)


def set_trainable(module: nn.Module, on: bool, *, momenta: dict[int, float | None]) -> None:
    """Freeze or unfreeze one group: its parameters and its BatchNorm statistics."""
    module.requires_grad_(on)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momenta.get(id(m), 0.1) if on else 0.0
