"""Training the mixing network: clean images should get alpha -> 0, attacked images alpha -> 1.

Per batch (METHODS.md section 3): adversarial images are made by attacking the whole
composite model (our PGD, in evaluation mode) with a random budget per image
(eps * U(eps_low, eps_high)), a random number of steps and a random momentum, maximising
(1 - w) L + w BCE(gamma, 1), w ~ U(0, w_max), where L is cross-entropy or, for a fraction
of batches, the targeted DLR loss towards a random runner-up class. The loss of the mixing
network on clean (label 0) and attacked (label 1) images is
c_bce BCE(gamma, label) + c_ce CE(out, y) + c_prod BCE * CE. Only the mixing network's
parameters are in the optimiser; the bases are frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trustvision.robust.attacks import LossFn, dlr_targeted, pgd
from trustvision.robust.config import MixNetSettings
from trustvision.robust.mixing import AdaptiveMixedClassifier
from trustvision.train.loop import Objective


def _uniform(n: int, low: float, high: float, like: Tensor) -> Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, dtype=like.dtype)


def composite_loss(
    mix: AdaptiveMixedClassifier, *, weight: Tensor, target: Tensor | None = None
) -> LossFn:
    """(1 - w) CE (or targeted DLR) of the mix + w BCE(gamma, 1): pushes alpha down too."""

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


def runner_up_target(mix: AdaptiveMixedClassifier, x: Tensor, y: Tensor) -> Tensor | None:
    """A random class among the 2nd..4th most likely (never the label); None under 4 classes."""
    with torch.no_grad():
        order = mix(x).argsort(dim=1, descending=True)
    if order.shape[1] < 4:
        return None
    rank = torch.randint(1, min(4, order.shape[1]), (len(y),), device=x.device)
    target = order.gather(1, rank[:, None]).squeeze(1)
    return torch.where(target == y, order[:, 0], target)


def attack_composite(
    mix: AdaptiveMixedClassifier, x: Tensor, y: Tensor, *, eps: float, cfg: MixNetSettings
) -> Tensor:
    """Randomised PGD on the composite (evaluation mode), one draw of the settings per batch."""
    was_training = mix.training
    mix.eval()
    try:
        n = len(y)
        eps_i = eps * _uniform(n, cfg.eps_low, cfg.eps_high, x)
        steps = int(torch.randint(cfg.steps_low, cfg.steps_high + 1, ()).item())
        weight = _uniform(n, 0.0, cfg.bce_weight_max, x)
        targeted = torch.rand(()).item() < cfg.targeted_fraction
        target = runner_up_target(mix, x, y) if targeted else None
        return pgd(
            composite_loss(mix, weight=weight, target=target),
            x,
            y,
            eps=eps_i,
            step_size=2.5 * eps_i / steps,
            steps=steps,
            momentum=_uniform(n, 0.0, 0.5, x),
        )
    finally:
        mix.train(was_training)


def mixing_objective(cfg: MixNetSettings, *, eps: float) -> Objective:
    """fit's objective for an AdaptiveMixedClassifier; the logits returned are the attacked half."""

    def objective(model: torch.nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        assert isinstance(model, AdaptiveMixedClassifier)
        x_adv = attack_composite(model, x, y, eps=eps, cfg=cfg)
        out, gamma = model.forward_with_gamma(torch.cat([x, x_adv]))
        labels = torch.cat([torch.zeros_like(y), torch.ones_like(y)]).to(gamma.dtype)
        bce = F.binary_cross_entropy_with_logits(gamma, labels, reduction="none")
        ce = F.cross_entropy(out, torch.cat([y, y]), reduction="none")
        loss = cfg.c_bce * bce + cfg.c_ce * ce + cfg.c_prod * bce * ce
        return loss.mean(), out[len(y) :]

    return objective
