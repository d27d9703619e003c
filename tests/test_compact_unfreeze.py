"""Progressive unfreezing: exactly the scheduled groups train, frozen state stays put; lr / 2.6."""

from __future__ import annotations

import pytest
import torch

from trustvision.compact.config import FinetuneConfig, UnifyConfig
from trustvision.compact.unfreeze import (
    ProgressiveUnfreezing,
    all_at_once,
    discriminative_scales,
    unfreeze_schedule,
)
from trustvision.config import OptimConfig
from trustvision.data.loader import BatchLoader
from trustvision.errors import ConfigError
from trustvision.models import create_model
from trustvision.train.loop import Accel, cross_entropy, train_epoch
from trustvision.train.optim import build_optimizer, parameter_groups


def model_and_groups():
    torch.manual_seed(0)
    model = create_model("compact_tiny", num_classes=3, in_channels=1, image_size=12)
    return model, model.layer_groups()


def batches(seed: int = 0) -> BatchLoader:
    torch.manual_seed(seed)
    images = torch.randint(0, 256, (64, 1, 12, 12), dtype=torch.uint8)
    return BatchLoader(images, torch.arange(64) % 3, batch_size=16, mean=(0.5,), std=(0.25,))


def test_default_schedule_unfreezes_one_group_per_epoch_from_the_top() -> None:
    assert unfreeze_schedule(4) == [3, 2, 1, 0]
    assert unfreeze_schedule(3, epochs_per_group=2) == [4, 2, 0]
    assert unfreeze_schedule(3, unfreeze_at=[0, 0, 5]) == [5, 0, 0]
    assert all_at_once(3) == [0, 0, 0]
    # a short stage: the groups that would join after its last epoch join at it, not never
    assert unfreeze_schedule(4, epochs=2) == [1, 1, 1, 0]
    assert unfreeze_schedule(3, epochs_per_group=2, epochs=8) == [4, 2, 0]


def test_schedule_length_must_match_the_groups() -> None:
    with pytest.raises(ConfigError, match=r"`finetune.unfreeze_at=\[0, 1\]` has 2 entries"):
        unfreeze_schedule(3, unfreeze_at=[0, 1])


def test_config_rejects_a_schedule_that_does_not_start_with_the_head() -> None:
    with pytest.raises(ValueError, match="must start at 0"):
        FinetuneConfig(unfreeze_at=[1, 2])
    with pytest.raises(ValueError, match="would never train"):
        FinetuneConfig(epochs=3, unfreeze_at=[0, 1, 3])
    with pytest.raises(ValueError, match="would deploy them reset"):
        UnifyConfig(mode="average", bn_batches=0)


def test_at_each_epoch_exactly_the_scheduled_groups_are_trainable() -> None:
    _, groups = model_and_groups()
    hook = ProgressiveUnfreezing(groups, unfreeze_schedule(len(groups)))

    for epoch in range(len(groups) + 1):
        hook(epoch)
        trainable = [all(p.requires_grad for p in g.parameters()) for g in groups]
        frozen = [not any(p.requires_grad for p in g.parameters()) for g in groups]
        on = min(epoch + 1, len(groups))
        assert trainable == [False] * (len(groups) - on) + [True] * on, epoch
        assert [t or f for t, f in zip(trainable, frozen, strict=True)] == [True] * len(groups)


def test_frozen_groups_do_not_change_while_the_others_train() -> None:
    model, groups = model_and_groups()
    hook = ProgressiveUnfreezing(groups, unfreeze_schedule(len(groups)))
    optimizer = build_optimizer(OptimConfig(lr=0.1, weight_decay=5e-4), parameter_groups(groups))
    hook(1)  # head and the last stage train; the stem is frozen
    stem_before = {k: v.clone() for k, v in groups[0].state_dict().items()}
    top_before = {k: v.clone() for k, v in groups[-2].state_dict().items()}

    train_epoch(
        model,
        batches().epoch(0),
        optimizer=optimizer,
        objective=cross_entropy(),
        accel=Accel(torch.device("cpu")),
    )

    for key, value in groups[0].state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # a counter, read only when momentum is None
        assert torch.equal(value, stem_before[key]), f"frozen `{key}` changed"
    changed = [not torch.equal(v, top_before[k]) for k, v in groups[-2].state_dict().items()]
    assert any(changed)


def test_release_restores_every_group() -> None:
    model, groups = model_and_groups()
    hook = ProgressiveUnfreezing(groups, unfreeze_schedule(len(groups)))
    hook(0)

    hook.release()

    assert all(p.requires_grad for p in model.parameters())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)


def test_discriminative_lrs_divide_by_2_6_per_group_down() -> None:
    _, groups = model_and_groups()
    scales = discriminative_scales(len(groups))
    optimizer = build_optimizer(OptimConfig(lr=0.02), parameter_groups(groups, lr_scales=scales))

    lr_of = {g["layer_group"]: g["lr"] for g in optimizer.param_groups}

    assert lr_of[len(groups) - 1] == pytest.approx(0.02)
    for index in range(len(groups) - 1):
        assert lr_of[index] == pytest.approx(lr_of[index + 1] / 2.6)
