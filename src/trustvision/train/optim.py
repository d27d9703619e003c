"""Optimisers, learning-rate schedules (stepped per batch) and parameter groups."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from trustvision.config import OptimConfig


def parameter_groups(
    modules: Sequence[nn.Module], *, lr_scales: Sequence[float] | None = None
) -> list[dict]:
    """One optimiser group per module (e.g. a model's layer groups), each with an lr scale.

    Weight decay applies to weight matrices and kernels only, never to biases or norm scales;
    frozen parameters (requires_grad False) are still listed so they can be unfrozen later
    without rebuilding the optimiser.
    """
    scales = list(lr_scales) if lr_scales is not None else [1.0] * len(modules)
    if len(scales) != len(modules):
        raise ValueError(f"{len(scales)} lr scales for {len(modules)} modules")
    groups = []
    for index, (module, scale) in enumerate(zip(modules, scales, strict=True)):
        decay = [p for p in module.parameters() if p.ndim > 1]
        no_decay = [p for p in module.parameters() if p.ndim <= 1]
        for params, decays in ((decay, True), (no_decay, False)):
            if params:
                groups.append(
                    {"params": params, "lr_scale": scale, "decay": decays, "layer_group": index}
                )
    return groups


def build_optimizer(cfg: OptimConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimiser `cfg.name` over parameter groups made by `parameter_groups`."""
    for group in groups:
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
        group["weight_decay"] = cfg.weight_decay if group.get("decay", True) else 0.0
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, *, cfg: OptimConfig, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate after `step` optimiser steps."""
    progress = min(step / max(total_steps, 1), 1.0)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "warmup_cosine":  # linear warm-up from 10% of the peak, then cosine
        if progress < cfg.warmup_fraction:
            return 0.1 + 0.9 * progress / cfg.warmup_fraction
        rest = (progress - cfg.warmup_fraction) / (1.0 - cfg.warmup_fraction)
        return 0.5 * (1.0 + math.cos(math.pi * rest))
    if cfg.schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    # onecycle: linear warm-up from 10% of the peak, then linear decay to zero (as airbench)
    if progress < cfg.warmup_fraction:
        return 0.1 + 0.9 * progress / cfg.warmup_fraction
    return (1.0 - progress) / (1.0 - cfg.warmup_fraction)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-batch LambdaLR; its state is plain numbers, so it checkpoints as JSON."""
    factor = partial(lr_factor, cfg=cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
