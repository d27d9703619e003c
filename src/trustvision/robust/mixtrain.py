"""Training the mixing network: clean images should get alpha -> 0, attacked images alpha -> 1.

The recipe follows the authors' code (Bai-YT/AdaptiveSmoothing, trainer.py and attacks.py),
in its PGD variant: per batch of clean images, the whole composite model (in evaluation mode)
is attacked once without a target (cross-entropy) and once towards each of the
`target_classes` most likely other classes (targeted DLR), every attack with its own random
budget per image (eps * U(eps_low, eps_high)), momentum per image, number of steps
(chi-squared) and loss weight w ~ U(0, w_max) per image on (1 - w) L + w BCE(gamma', 1), which
also pushes the gate towards the non-robust base. Every attacked copy is kept. The clean images
and their copies are shuffled together and passed in `MixNetSettings.minibatches` parts, so
that the gate's BatchNorm sees both kinds in each part and updates its statistics that often.
Each image's loss is c_bce BCE(gamma', attacked) + c_ce CE(out, y) + c_prod BCE * CE, clean
images weighted `clean_weight`. Only the mixing network's parameters are in the optimiser; the
bases are frozen.

Our own PGD (robust/attacks.py) makes the attacks, not AutoAttack's APGD as in the authors'
other variant: pyautoattack's APGD takes one eps and one loss for a whole batch, and the
recipe draws both per image. Evaluation attacks are AutoAttack's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trustvision.robust.attacks import LossFn, dlr_targeted, pgd
from trustvision.robust.mixing import AdaptiveMixedClassifier, MixedClassifier
from trustvision.robust.mixnet_settings import MixNetSettings
from trustvision.train.loop import Objective


def _uniform(n: int, low: float, high: float, like: Tensor) -> Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, dtype=like.dtype)


def composite_loss(
    mix: AdaptiveMixedClassifier, *, weight: Tensor | float, target: Tensor | None = None
) -> LossFn:
    """(1 - w) CE (or targeted DLR) of the mix + w BCE(gamma', 1): pushes alpha down too."""

    def loss(x: Tensor, y: Tensor) -> Tensor:
        out, gamma = mix.forward_with_gamma(x)
        base = (
            F.cross_entropy(out, y, reduction="none")
            if target is None
            else dlr_targeted(out, y, target)
        )
        bce = F.binary_cross_entropy_with_logits(gamma, torch.ones_like(gamma), reduction="none")
        return (1 - weight) * base + weight * bce

    return loss


def ranked_targets(mix: torch.nn.Module, x: Tensor, y: Tensor, count: int) -> list[Tensor]:
    """Per image, the 2nd, 3rd, ... most likely class of the mix (`count` of them, at most all
    but one class, none under 4 classes: targeted DLR needs 4); where one is the label (the
    mix is wrong on the clean image), the most likely class replaces it."""
    with torch.no_grad():
        order = mix(x).argsort(dim=1, descending=True)
    if order.shape[1] < 4:
        return []
    return [
        torch.where(order[:, rank] == y, order[:, 0], order[:, rank])
        for rank in range(1, min(count, order.shape[1] - 1) + 1)
    ]


def fixed_mix(mix: AdaptiveMixedClassifier) -> MixedClassifier:
    """The bases' 50/50 mix at the mix's temperatures: what a blind attack attacks."""
    return MixedClassifier(
        mix.standard,
        mix.robust,
        alpha=0.5,
        temperature_std=mix.temperature_std,
        temperature_rob=mix.temperature_rob,
    )


def blind_loss(fixed: MixedClassifier, *, target: Tensor | None = None) -> LossFn:
    """CE (or targeted DLR) of the bases' 50/50 mix: an attack on it does not see the gate, so
    it cannot steer alpha."""

    def loss(x: Tensor, y: Tensor) -> Tensor:
        out = fixed(x)
        if target is None:
            return F.cross_entropy(out, y, reduction="none")
        return dlr_targeted(out, y, target)

    return loss


def random_attack(
    mix: AdaptiveMixedClassifier,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    cfg: MixNetSettings,
    target: Tensor | None = None,
    blind: MixedClassifier | None = None,
) -> Tensor:
    """One randomised PGD attack on the composite (see the module docstring); `blind` (the
    bases' 50/50 mix, which the gate does not steer): on it instead (w = 0)."""
    n = len(y)
    eps_i = eps * _uniform(n, cfg.eps_low, cfg.eps_high, x)
    draw = float(torch.distributions.Chi2(torch.tensor(cfg.steps_df)).sample()) + cfg.steps_const
    steps = max(1, round(draw))
    weight = _uniform(n, 0.0, cfg.bce_weight_max, x)
    return pgd(
        blind_loss(blind, target=target)
        if blind is not None
        else composite_loss(mix, weight=weight, target=target),
        x,
        y,
        eps=eps_i,
        step_size=cfg.step_factor * eps_i / max(draw, 1.0),
        steps=steps,
        momentum=_uniform(n, 0.0, cfg.momentum_max, x),
    )


def training_adversaries(
    mix: AdaptiveMixedClassifier,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    cfg: MixNetSettings,
    blind: bool = False,
) -> list[Tensor]:
    """The attacked copies of a clean batch: untargeted first, then one per ranked target
    (`blind`: made on the bases' 50/50 mix, which the gate does not steer)."""
    was_training = mix.training
    mix.eval()
    try:
        fixed = fixed_mix(mix) if blind else None
        targets = ranked_targets(fixed or mix, x, y, cfg.target_classes)
        return [
            random_attack(mix, x, y, eps=eps, cfg=cfg, target=target, blind=fixed)
            for target in (None, *targets)
        ]
    finally:
        mix.train(was_training)


def average_gate_statistics(mix: AdaptiveMixedClassifier) -> None:
    """From now on the gate's BatchNorm keeps the plain average of every training pass's
    statistics (momentum None), starting afresh. Called when the last epoch begins, so that
    evaluation normalises gamma with the trained network's own statistics, not with an
    exponential average that still carries its first steps' (0.99^n of the start remains after
    n updates at momentum 0.01). The statistics themselves stay until the next training pass
    replaces them (its weight is 1/1): the epoch's first training attacks, made in evaluation
    mode, still see the trained gate, not one reset to mean 0 and variance 1."""
    assert mix.gamma_norm.num_batches_tracked is not None
    mix.gamma_norm.num_batches_tracked.zero_()
    mix.gamma_norm.momentum = None


@dataclass
class GateMonitor:
    """The gate's mean alpha on clean and on attacked images while the mixing network trains
    (training mode: the batch's own BatchNorm statistics, no alpha range)."""

    sums: dict[str, float] = field(default_factory=lambda: {"clean": 0.0, "attacked": 0.0})
    counts: dict[str, int] = field(default_factory=lambda: {"clean": 0, "attacked": 0})

    def add(self, alpha: Tensor, attacked: Tensor) -> None:
        for key, rows in (("clean", attacked == 0), ("attacked", attacked == 1)):
            self.sums[key] += float(alpha[rows].sum())
            self.counts[key] += int(rows.sum())

    def epoch_record(self) -> dict[str, float]:
        """Means since the last call, as `train_alpha_clean` / `train_alpha_attacked`; resets."""
        record = {
            f"train_alpha_{key}": self.sums[key] / self.counts[key]
            for key in self.sums
            if self.counts[key]
        }
        self.sums = {key: 0.0 for key in self.sums}
        self.counts = {key: 0 for key in self.counts}
        return record


def mixing_objective(
    cfg: MixNetSettings,
    *,
    eps: float,
    monitor: GateMonitor | None = None,
    blind: Callable[[], bool] = lambda: False,
) -> Objective:
    """fit's objective for an AdaptiveMixedClassifier; the logits returned are those of the
    untargeted attack's images, in the batch's order. While `blind()` holds (the first
    `cfg.blind_epochs` epochs) the training attacks do not see the gate."""

    def objective(model: torch.nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        assert isinstance(model, AdaptiveMixedClassifier)
        adversaries = training_adversaries(model, x, y, eps=eps, cfg=cfg, blind=blind())
        images = torch.cat([x, *adversaries])
        labels = y.repeat(1 + len(adversaries))
        attacked = torch.ones(len(images), device=x.device)
        attacked[: len(y)] = 0.0
        weights = torch.where(attacked == 0, cfg.clean_weight, 1.0)
        order = torch.randperm(len(images), device=x.device)
        total = torch.zeros((), device=x.device)
        outputs = []
        for part in order.chunk(cfg.minibatches):
            out, gamma = model.forward_with_gamma(images[part])
            bce = F.binary_cross_entropy_with_logits(gamma, attacked[part], reduction="none")
            ce = F.cross_entropy(out, labels[part], reduction="none")
            loss = cfg.c_bce * bce + cfg.c_ce * ce + cfg.c_prod * bce * ce
            total = total + (weights[part] * loss).sum()
            outputs.append(out.detach())
            if monitor is not None:
                monitor.add(torch.sigmoid(gamma.detach()), attacked[part])
        in_batch_order = torch.cat(outputs)[torch.argsort(order)]
        return total / weights.sum(), in_batch_order[len(y) : 2 * len(y)]

    return objective


@torch.no_grad()
def _gate_stats(mix: AdaptiveMixedClassifier, x: Tensor) -> tuple[float, float, float]:
    """Mean alpha (evaluation mode), and the mean and std of the raw gamma before the gate."""
    raw = mix.raw_gamma(mix.standard.forward_with_maps(x)[1], mix.robust.forward_with_maps(x)[1])
    alpha = mix.alpha(mix.gate(raw))
    return float(alpha.mean()), float(raw.mean()), float(raw.std())


def gate_record(
    mix: AdaptiveMixedClassifier, x: Tensor, y: Tensor, *, eps: float, steps: int
) -> dict[str, Any]:
    """The gate in evaluation mode on clean `x`, on `x` under PGD on the mix's cross-entropy
    (`attacked`: it does not aim at the gate, but its gradient runs through it and lowers alpha
    where the standard base is the easier one to fool, as AutoAttack's do) and under PGD that also
    pushes the gate towards the standard base (`adaptive`: cross-entropy plus 0.3 BCE(gamma',
    1)), full eps: the mean alpha (`val_alpha_<kind>`) and the raw gamma's mean and std before
    the BatchNorm, with the BatchNorm's running statistics and number of updates, so that a
    gate whose normalisation has not settled, or whose raw outputs barely differ, shows."""
    was_training = mix.training
    mix.eval()
    try:
        step = 2.5 * eps / steps
        images = {
            "clean": x,
            "attacked": pgd(
                composite_loss(mix, weight=0.0), x, y, eps=eps, step_size=step, steps=steps
            ),
            "adaptive": pgd(
                composite_loss(mix, weight=0.3), x, y, eps=eps, step_size=step, steps=steps
            ),
        }
        record: dict[str, Any] = {}
        for kind, batch in images.items():
            alpha, mean, std = _gate_stats(mix, batch)
            record |= {
                f"val_alpha_{kind}": alpha,
                f"val_raw_gamma_mean_{kind}": mean,
                f"val_raw_gamma_std_{kind}": std,
            }
        norm = mix.gamma_norm
        assert norm.running_mean is not None and norm.running_var is not None
        assert norm.num_batches_tracked is not None
        return record | {
            "gate_bn_running_mean": float(norm.running_mean[0]),
            "gate_bn_running_var": float(norm.running_var[0]),
            "gate_bn_updates": int(norm.num_batches_tracked),
        }
    finally:
        mix.train(was_training)
