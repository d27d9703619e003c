"""The validation sweeps that choose a mix's knobs, and the rule that chooses.

Fixed mix: a grid over alpha x s_g x s_h. Clean accuracy at every point comes from one pass
of each base over the validation images (a constant mix is a closed-form function of the two
sets of logits); robust accuracy needs an attack per point, on the first `subset` validation
images, with AutoAttack's APGD. At alpha 0 the mix is g alone and s_h is unused, at alpha 1 it
is h alone and s_g is unused: those points are attacked once per value of the temperature in
use, and the unused one is recorded as None.

Adaptive mix: a grid over gamma bias x s_g x s_h once the mixing network has trained; clean
accuracy again from cached base logits and the mixing network's gamma before its bias.

The images are whatever the caller passes: the commands pass validation images
(`evaluate.validation_pixels`), never test images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustvision.robust.autoattack import attack_chunk, build_attackers
from trustvision.robust.config import SweepSettings
from trustvision.robust.mixing import (
    AdaptiveMixedClassifier,
    MixedClassifier,
    log_weights,
    mix_log_probs,
)
from trustvision.robust.pixels import device_of, logits_of

FIXED_KNOBS = ("alpha", "temperature_std", "temperature_rob")
ADAPTIVE_KNOBS = ("gamma_bias", "temperature_std", "temperature_rob")
OnPoint = Callable[[dict[str, Any]], None]


def clean_accuracy_at(
    logits_std: Tensor,
    logits_rob: Tensor,
    y: Tensor,
    *,
    alpha: float,
    temperature_std: float = 1.0,
    temperature_rob: float = 1.0,
) -> float:
    """Clean accuracy of the constant-alpha mix from cached base logits."""
    log_a, log_b = log_weights(alpha)
    out = mix_log_probs(
        logits_std,
        logits_rob,
        log_alpha=log_a,
        log_one_minus_alpha=log_b,
        temperature_std=temperature_std,
        temperature_rob=temperature_rob,
    )
    return float((out.argmax(1) == y).float().mean())


def robust_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, settings: SweepSettings, seed: int = 0
) -> tuple[float, float]:
    """Accuracy under the sweep's AutoAttack attacks (worst case per point) and seconds taken."""
    attackers = build_attackers(model, eps=eps, version="custom", custom=settings.attack, seed=seed)
    start = time.perf_counter()
    result = attack_chunk(attackers, x, y, batch_size=settings.attack.batch_size)
    robust = sum(f is None for f in result.fooled_by) / max(len(y), 1)
    return robust, time.perf_counter() - start


def _unique(values: Sequence[float]) -> list[float]:
    return list(dict.fromkeys(values))


def fixed_grid(settings: SweepSettings) -> list[tuple[float, float | None, float | None]]:
    """(alpha, s_g, s_h) of every fixed-mix grid point; None marks a temperature alpha leaves
    unused (s_h at alpha 0, s_g at alpha 1)."""
    grid: list[tuple[float, float | None, float | None]] = []
    for alpha in sorted(set(settings.alphas)):
        stds: list[float | None] = [*_unique(settings.temperatures_std)] if alpha < 1 else [None]
        robs: list[float | None] = [*_unique(settings.temperatures_rob)] if alpha > 0 else [None]
        grid += [(alpha, s_g, s_h) for s_g in stds for s_h in robs]
    return grid


def temperatures(point: dict[str, Any]) -> dict[str, float]:
    """The temperatures of a grid point as model arguments (an unused one is 1)."""
    return {
        key: 1.0 if point[key] is None else float(point[key])
        for key in ("temperature_std", "temperature_rob")
    }


def alpha_sweep(
    standard: nn.Module,
    robust: nn.Module,
    *,
    images: tuple[Tensor, Tensor],
    eps: float,
    settings: SweepSettings,
    seed: int = 0,
    on_point: OnPoint | None = None,
) -> list[dict[str, Any]]:
    """One point per (alpha, s_g, s_h): clean accuracy on all of `images`, robust accuracy on
    their first `settings.subset`."""
    x, y = images
    logits_std, logits_rob = logits_of(standard, x), logits_of(robust, x)
    x_sub, y_sub = x[: settings.subset], y[: settings.subset]
    points = []
    for alpha, s_g, s_h in fixed_grid(settings):
        point: dict[str, Any] = {"alpha": alpha, "temperature_std": s_g, "temperature_rob": s_h}
        temps = temperatures(point)
        mix = MixedClassifier(standard, robust, alpha=alpha, **temps)
        rob_acc, seconds = robust_accuracy(mix, x_sub, y_sub, eps=eps, settings=settings, seed=seed)
        point.update(
            clean_acc=clean_accuracy_at(logits_std, logits_rob, y.cpu(), alpha=alpha, **temps),
            robust_acc=rob_acc,
            seconds=seconds,
        )
        points.append(point)
        if on_point is not None:
            on_point(point)
    return points


@torch.no_grad()
def gamma_before_bias(mix: AdaptiveMixedClassifier, x: Tensor, *, batch_size: int = 500) -> Tensor:
    """BN(gamma) * scale of the mixing network (gamma' without its bias), on the CPU."""
    device = device_of(mix)
    parts = [
        mix.forward_with_gamma(x[i : i + batch_size].to(device))[1].cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts) - float(mix.gamma_bias)


@contextmanager
def _knobs(
    mix: AdaptiveMixedClassifier, *, bias: float, temperature_std: float, temperature_rob: float
) -> Iterator[AdaptiveMixedClassifier]:
    """The mix with other knobs for the duration of a block."""
    before = (float(mix.gamma_bias), mix.temperature_std, mix.temperature_rob)
    mix.gamma_bias.fill_(bias)
    mix.temperature_std, mix.temperature_rob = temperature_std, temperature_rob
    try:
        yield mix
    finally:
        mix.gamma_bias.fill_(before[0])
        mix.temperature_std, mix.temperature_rob = before[1], before[2]


def set_knobs(mix: AdaptiveMixedClassifier, point: dict[str, Any]) -> None:
    """Give the adaptive mix the gamma bias and temperatures of a grid point."""
    mix.gamma_bias.fill_(float(point["gamma_bias"]))
    mix.temperature_std = float(point["temperature_std"])
    mix.temperature_rob = float(point["temperature_rob"])


def bias_sweep(
    mix: AdaptiveMixedClassifier,
    *,
    images: tuple[Tensor, Tensor],
    biases: Sequence[float],
    eps: float,
    settings: SweepSettings,
    seed: int = 0,
    on_point: OnPoint | None = None,
) -> list[dict[str, Any]]:
    """One point per (gamma bias, s_g, s_h) of a trained adaptive mix (in evaluation mode):
    clean accuracy on all of `images`, robust accuracy on their first `settings.subset`.
    The mix's own knobs are restored afterwards."""
    x, y = images
    logits_std, logits_rob = logits_of(mix.standard, x), logits_of(mix.robust, x)
    gamma = gamma_before_bias(mix, x)
    x_sub, y_sub = x[: settings.subset], y[: settings.subset]
    points = []
    for bias in _unique(biases):
        for s_g in _unique(settings.temperatures_std):
            for s_h in _unique(settings.temperatures_rob):
                out = mix_log_probs(
                    logits_std,
                    logits_rob,
                    log_alpha=F.logsigmoid(gamma + bias),
                    log_one_minus_alpha=F.logsigmoid(-(gamma + bias)),
                    temperature_std=s_g,
                    temperature_rob=s_h,
                )
                with _knobs(mix, bias=bias, temperature_std=s_g, temperature_rob=s_h):
                    rob_acc, seconds = robust_accuracy(
                        mix, x_sub, y_sub, eps=eps, settings=settings, seed=seed
                    )
                point = {
                    "gamma_bias": bias,
                    "temperature_std": s_g,
                    "temperature_rob": s_h,
                    "clean_acc": float((out.argmax(1) == y.cpu()).float().mean()),
                    "robust_acc": rob_acc,
                    "seconds": seconds,
                }
                points.append(point)
                if on_point is not None:
                    on_point(point)
    return points


def _preference(point: dict[str, Any], keys: tuple[str, ...]) -> tuple[float, ...]:
    """Tie-break between equally good points: the larger first knob (more weight on the robust
    base), then temperatures nearer 1 (the bases as trained)."""
    rest = (-abs(math.log(point[k])) if point[k] else 0.0 for k in keys[1:])
    return (float(point[keys[0]]), *rest)


def choose(
    points: Sequence[dict[str, Any]],
    *,
    tolerance: float,
    reference: float | None = None,
    key: str | tuple[str, ...] = "alpha",
) -> dict[str, Any]:
    """The most accurate point whose robust accuracy is within `tolerance` of `reference`
    (default: the most robust point's); with none that close, the most robust point.

    `key` names the knobs (the first one breaks ties first; see `_preference`).
    """
    keys = (key,) if isinstance(key, str) else key
    best = max(points, key=lambda p: (p["robust_acc"], p["clean_acc"], *_preference(p, keys)))
    target = best["robust_acc"] if reference is None else reference
    allowed = [p for p in points if p["robust_acc"] >= target - tolerance]
    if not allowed:
        return best
    return max(allowed, key=lambda p: (p["clean_acc"], p["robust_acc"], *_preference(p, keys)))
