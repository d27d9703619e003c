"""Training objectives `(model, x, y) -> (loss, logits)` that perturb x inside: the core's `fit`
trains with them unchanged.

`model` is a pixel-space model (x in [0, 1]). Attacks are crafted in evaluation mode (no
dropout, BatchNorm running statistics, as TRADES does) and the model is put back in training
mode for the update. An optional linear eps ramp counts optimiser steps; `Ramp.start_epoch`
runs from `fit`'s `before_epoch`, so a resumed run ramps exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustvision.distributed import unwrap
from trustvision.robust.attacks import cross_entropy_loss, fgsm_rs, kl_to_clean, pgd
from trustvision.robust.config import AttackConfig
from trustvision.train.loop import Objective

ObjectiveFactory = Callable[[AttackConfig, "Ramp"], Objective]


class Ramp:
    """eps multiplier growing linearly from 0 to 1 over `epochs` epochs, per optimiser step."""

    def __init__(self, *, epochs: float = 0.0, steps_per_epoch: int = 1) -> None:
        self.total = epochs * steps_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self.step = 0

    def start_epoch(self, epoch: int) -> None:
        """Set the step counter to the first step of `epoch` (fit's before_epoch hook)."""
        self.step = epoch * self.steps_per_epoch

    def next(self) -> float:
        """The multiplier of the coming step."""
        factor = 1.0 if self.total <= 0 else min(1.0, (self.step + 1) / self.total)
        self.step += 1
        return factor


def _craft(model: nn.Module, attack: Callable[[], Tensor]) -> Tensor:
    """Run `attack` with the model in evaluation mode; restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        return attack()
    finally:
        model.train(was_training)


def standard(cfg: AttackConfig, ramp: Ramp) -> Objective:
    """Plain cross-entropy on clean images."""

    def objective(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    return objective


def pgd_at(cfg: AttackConfig, ramp: Ramp) -> Objective:
    """Madry et al.: cross-entropy on PGD examples (the reported logits are adversarial)."""

    def objective(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        scale, net = ramp.next(), unwrap(model)
        x_adv = _craft(
            net,
            lambda: pgd(
                cross_entropy_loss(net),
                x,
                y,
                eps=cfg.eps * scale,
                step_size=cfg.resolved_step_size() * scale,
                steps=cfg.steps,
                norm=cfg.norm,
            ),
        )
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    return objective


def fast_at(cfg: AttackConfig, ramp: Ramp) -> Objective:
    """Wong et al. 2020: cross-entropy on FGSM examples from a random start (step 1.25 eps)."""

    def objective(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        scale, net = ramp.next(), unwrap(model)
        x_adv = _craft(
            net,
            lambda: fgsm_rs(
                cross_entropy_loss(net),
                x,
                y,
                eps=cfg.eps * scale,
                step_size=cfg.resolved_step_size() * scale,
            ),
        )
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    return objective


def trades(cfg: AttackConfig, ramp: Ramp) -> Objective:
    """Zhang et al. 2019: CE(f(x), y) + beta KL(p(x) || p(x_adv)), x_adv maximising the KL."""

    def objective(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        scale, net = ramp.next(), unwrap(model)  # one forward through DDP: `logits` below

        def attack() -> Tensor:
            with torch.no_grad():
                clean = F.log_softmax(net(x), dim=1)
            start = (x + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)
            return pgd(
                kl_to_clean(net, clean),
                x,
                y,
                eps=cfg.eps * scale,
                step_size=cfg.resolved_step_size() * scale,
                steps=cfg.steps,
                norm=cfg.norm,
                start=start,
            )

        x_adv = _craft(net, attack)
        logits = model(x)
        kl = F.kl_div(
            F.log_softmax(net(x_adv), dim=1),
            F.log_softmax(logits, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return F.cross_entropy(logits, y) + cfg.beta * kl, logits

    return objective


def gaussian(cfg: AttackConfig, ramp: Ramp) -> Objective:
    """Cohen et al. 2019: cross-entropy under N(0, sigma^2) noise (a randomized-smoothing base)."""

    def objective(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x + cfg.sigma * ramp.next() * torch.randn_like(x))
        return F.cross_entropy(logits, y), logits

    return objective


OBJECTIVES: dict[str, ObjectiveFactory] = {
    "standard": standard,
    "pgd": pgd_at,
    "fgsm_rs": fast_at,
    "trades": trades,
    "gaussian": gaussian,
}


def make_objective(cfg: AttackConfig, *, ramp: Ramp | None = None) -> Objective:
    """The objective of `cfg.method` (a name in OBJECTIVES; the config type checks it)."""
    return OBJECTIVES[cfg.method](cfg, ramp or Ramp())
