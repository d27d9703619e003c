"""AutoAttack (the `pyautoattack` package) run attack by attack, with the per-point worst case.

AutoAttack's own loop runs each attack on the points still robust after the previous ones.
We run the same attack objects with the same settings in the same order (`standard`:
APGD-CE, APGD-T with 9 targets, FAB-T, Square with 5000 queries, 100 iterations each), so
each attack can be timed and the result of a chunk of images can be stored and resumed.
The adaptive attack adds `w * BCE(gamma, 1)` to APGD's loss, so that it also pushes the
mixing network towards the non-robust base (it subclasses APGD and swaps only the loss).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pyautoattack import AutoAttack
from pyautoattack import checks as aa_checks
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from torch import Tensor, nn

from trustvision.robust.config import STANDARD_ATTACKS, APGDSettings
from trustvision.robust.mixing import AdaptiveMixedClassifier
from trustvision.robust.pixels import device_of

ADAPTIVE_ATTACKS = ("adaptive-apgd-ce", "adaptive-apgd-t")


class GammaTap(nn.Module):
    """Wraps an adaptive mix: returns its log-probabilities, keeps the last gamma for a loss."""

    def __init__(self, mix: AdaptiveMixedClassifier) -> None:
        super().__init__()
        self.mix = mix
        self.gamma: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        out, self.gamma = self.mix.forward_with_gamma(x)
        return out

    def bce_to_robust(self) -> Tensor:
        """Per-sample BCE(gamma, 1) of the last forward pass: large where alpha is small."""
        assert self.gamma is not None, "forward must run before the loss"
        return F.binary_cross_entropy_with_logits(
            self.gamma, torch.ones_like(self.gamma), reduction="none"
        )


class AdaptiveAPGD(APGDAttack):
    """APGD maximising (1 - w) CE + w BCE(gamma, 1).

    pyautoattack 0.2.0 builds the CE criterion inside `attack_single_run`; its only other
    per-sample loss hook for an untargeted run is `ce_loss_targeted`, chosen by the loss
    name `ce-targeted`. We set that name for the duration of a run and define the hook.
    """

    def __init__(self, tap: GammaTap, *, weight: float, **kwargs: Any) -> None:
        super().__init__(tap, loss="ce", **kwargs)
        self.tap, self.weight = tap, weight

    def attack_single_run(self, x: Tensor, y: Tensor, x_init: Tensor | None = None) -> Any:
        self.loss = "ce-targeted"
        try:
            return super().attack_single_run(x, y, x_init)
        finally:
            self.loss = "ce"

    def ce_loss_targeted(self, logits: Tensor, y: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")
        return (1 - self.weight) * ce + self.weight * self.tap.bce_to_robust()


class AdaptiveAPGDT(APGDAttack_targeted):
    """APGD-T maximising (1 - w) targeted DLR + w BCE(gamma, 1)."""

    def __init__(self, tap: GammaTap, *, weight: float, **kwargs: Any) -> None:
        super().__init__(tap, **kwargs)
        self.tap, self.weight = tap, weight

    def dlr_loss_targeted(self, x: Tensor, y: Tensor) -> Tensor:
        dlr = super().dlr_loss_targeted(x, y)
        return (1 - self.weight) * dlr + self.weight * self.tap.bce_to_robust()


@dataclass
class AttackerSet:
    """The attack objects of one evaluation, keyed by name, and the model they attack."""

    model: nn.Module
    attacks: dict[str, Any]
    order: list[str]
    seed: int = 0


def _apgd_pair(
    model: nn.Module, *, eps: float, n_iter: int, n_targets: int, seed: int, device: Any
) -> tuple[APGDAttack, APGDAttack_targeted]:
    # Fresh objects: APGD derives its step-size checkpoints from n_iter in __init__.
    common = {"n_iter": n_iter, "norm": "Linf", "eps": eps, "seed": seed, "device": device}
    apgd = APGDAttack(model, n_restarts=1, loss="ce", rho=0.75, **common)
    apgd_t = APGDAttack_targeted(
        model, n_restarts=1, rho=0.75, n_target_classes=n_targets, **common
    )
    return apgd, apgd_t


def build_attackers(
    model: nn.Module,
    *,
    eps: float,
    version: str = "standard",
    custom: APGDSettings | None = None,
    adaptive_weight: float | None = None,
    seed: int = 0,
) -> AttackerSet:
    """AutoAttack's attacks for `model` (standard, or `custom` iterations and attacks), run on
    the model's device.

    With `adaptive_weight` (for a model with `forward_with_gamma`), the adaptive APGD-CE and
    APGD-T are appended; they attack the same model through a `GammaTap`.
    """
    device = device_of(model)
    aa = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed, device=device)
    attacks: dict[str, Any] = {
        "apgd-ce": aa.apgd,
        "apgd-t": aa.apgd_targeted,
        "fab-t": aa.fab,
        "square": aa.square,
    }
    order: list[str] = list(STANDARD_ATTACKS)
    settings = custom or APGDSettings()
    n_iter, n_targets = 100, 9
    if version == "custom":
        n_iter, n_targets = settings.n_iter, settings.n_target_classes
        attacks["apgd-ce"], attacks["apgd-t"] = _apgd_pair(
            model, eps=eps, n_iter=n_iter, n_targets=n_targets, seed=seed, device=device
        )
        aa.fab.n_iter, aa.fab.n_target_classes = n_iter, n_targets
        aa.square.n_queries = settings.square_queries
        order = list(settings.attacks)
    if adaptive_weight is not None:
        if not isinstance(model, AdaptiveMixedClassifier):
            raise TypeError("the adaptive attack needs an AdaptiveMixedClassifier (it reads gamma)")
        tap = GammaTap(model)
        common = {"n_iter": n_iter, "norm": "Linf", "eps": eps, "seed": seed, "device": device}
        attacks["adaptive-apgd-ce"] = AdaptiveAPGD(
            tap, weight=adaptive_weight, n_restarts=1, rho=0.75, **common
        )
        attacks["adaptive-apgd-t"] = AdaptiveAPGDT(
            tap,
            weight=adaptive_weight,
            n_restarts=1,
            rho=0.75,
            n_target_classes=n_targets,
            **common,
        )
        order += list(ADAPTIVE_ATTACKS)
    return AttackerSet(model=model, attacks=attacks, order=order, seed=seed)


def perturb(attackers: AttackerSet, name: str, x: Tensor, y: Tensor) -> Tensor:
    """Run one attack as AutoAttack's loop does (same settings, seed set before each call)."""
    attack = attackers.attacks[name]
    attack.seed = attackers.seed
    if name == "fab-t":
        attack.targeted, attack.n_restarts = True, 1
    return attack.perturb(x, y)


@torch.no_grad()
def _mean_alpha(mix: AdaptiveMixedClassifier, x: Tensor, batch_size: int) -> float:
    alphas = [
        mix.alpha(mix.forward_with_gamma(x[i : i + batch_size])[1])
        for i in range(0, len(x), batch_size)
    ]
    return float(torch.cat(alphas).mean())


def _worst_points(attack: Any, x: Tensor, y: Tensor, *, seed: int, batch_size: int) -> Tensor:
    """Every image's highest-loss point found by one APGD run, fooled or not."""
    torch.manual_seed(seed)
    worst = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        attack.init_hyperparam(xb)
        worst.append(attack.attack_single_run(xb, yb)[0].detach())
    return torch.cat(worst)


def gate_under_attack(
    attackers: AttackerSet, x: Tensor, y: Tensor, *, batch_size: int = 250
) -> dict[str, Any]:
    """The adaptive mix's mean alpha (evaluation mode) on clean `x`, on every image's
    highest-loss point under AutoAttack's APGD-CE (`attacked`: not aimed at the gate, though its
    gradient runs through it, as all of AutoAttack's) and under the adaptive APGD-CE (`adaptive`: it also pushes the
    gate towards the standard base), whether or not that point fooled the mix (AutoAttack's own
    output keeps the clean image where no attack succeeded, which would mix the two)."""
    mix = attackers.model
    if not isinstance(mix, AdaptiveMixedClassifier) or "adaptive-apgd-ce" not in attackers.attacks:
        raise TypeError("the gate's alphas need an adaptive mix with its adaptive attack")
    plain, adaptive = attackers.attacks["apgd-ce"], attackers.attacks["adaptive-apgd-ce"]
    seed = attackers.seed
    return {
        "alpha_clean": _mean_alpha(mix, x, batch_size),
        "alpha_attacked": _mean_alpha(
            mix, _worst_points(plain, x, y, seed=seed, batch_size=batch_size), batch_size
        ),
        "alpha_adaptive": _mean_alpha(
            mix, _worst_points(adaptive, x, y, seed=seed, batch_size=batch_size), batch_size
        ),
        "attacks": {
            "attacked": f"AutoAttack's APGD-CE ({plain.n_iter} it.)",
            "adaptive": f"the adaptive APGD-CE (weight {adaptive.weight:g}, {adaptive.n_iter} it.)",
        },
        "n": len(x),
    }


@dataclass
class ChunkResult:
    """One chunk of images: who was fooled by which attack, and how long each attack took."""

    clean_correct: list[bool]
    fooled_by: list[str | None]  # "clean" (misclassified), an attack name, or None (robust)
    seconds: dict[str, float] = field(default_factory=dict)
    attacked: dict[str, int] = field(default_factory=dict)  # images each attack ran on
    skipped: list[str] = field(default_factory=list)  # attacks not run (`stop_below`)

    def to_json(self) -> dict[str, Any]:
        return {
            "clean_correct": self.clean_correct,
            "fooled_by": self.fooled_by,
            "seconds": self.seconds,
            "attacked": self.attacked,
            "skipped": self.skipped,
        }


@torch.no_grad()
def predict_labels(model: nn.Module, x: Tensor, *, batch_size: int) -> Tensor:
    """Predicted classes of `x`, in batches."""
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def attack_chunk(
    attackers: AttackerSet, x: Tensor, y: Tensor, *, batch_size: int = 250, stop_below: float = 0
) -> ChunkResult:
    """Every attack in order on the points still robust: AutoAttack's worst case, per point.
    Once fewer than `stop_below` points are still robust, the remaining attacks are skipped
    (`skipped`): they could only fool more, so the count left is an upper bound."""
    model = attackers.model
    correct = predict_labels(model, x, batch_size=batch_size) == y
    fooled_by: list[str | None] = [None if ok else "clean" for ok in correct.tolist()]
    result = ChunkResult(clean_correct=correct.tolist(), fooled_by=fooled_by)
    robust = correct.clone()
    for position, name in enumerate(attackers.order):
        if int(robust.sum()) < stop_below:
            result.skipped = attackers.order[position:]
            break
        index = robust.nonzero().flatten()
        start = time.perf_counter()
        for part in index.split(batch_size) if len(index) else ():
            adv = perturb(attackers, name, x[part], y[part])
            wrong = predict_labels(model, adv, batch_size=batch_size) != y[part]
            for i in part[wrong].tolist():
                fooled_by[i] = name
            robust[part[wrong]] = False
        result.seconds[name] = time.perf_counter() - start
        result.attacked[name] = len(index)
    return result


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def autoattack_flags(
    model: nn.Module, x: Tensor, y: Tensor, *, attacks: Sequence[str], n_targets: int = 9
) -> list[str]:
    """AutoAttack's own checks (randomness, probability outputs, dynamic defence, classes)."""
    logger = logging.getLogger("trustvision.robust.autoattack.checks")
    handler = _Collect()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        aa_checks.check_randomized(model, x, y, bs=len(x), logger=logger)
        n_cls = aa_checks.check_range_output(model, x, logger=logger)
        aa_checks.check_dynamic(model, x, False, logger=logger)
        aa_checks.check_n_classes(n_cls, list(attacks), n_targets, n_targets, logger=logger)
    finally:
        logger.removeHandler(handler)
    return handler.messages
