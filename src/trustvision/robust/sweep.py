"""The accuracy-robustness trade-off of a fixed mix: clean and attacked accuracy against alpha.

Clean accuracy at every alpha comes from one pass of each base over the test set (a
constant mix is a closed-form function of the two sets of logits); robust accuracy needs
an attack per alpha, run on the first `subset` test images with AutoAttack's APGD.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from trustvision.robust.autoattack import attack_chunk, build_attackers
from trustvision.robust.config import SweepSettings
from trustvision.robust.mixing import MixedClassifier, log_weights, mix_log_probs
from trustvision.robust.pixels import logits_of


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


def alpha_sweep(
    standard: nn.Module,
    robust: nn.Module,
    *,
    test: tuple[Tensor, Tensor],
    eps: float,
    settings: SweepSettings,
    temperature_std: float = 1.0,
    temperature_rob: float = 1.0,
    seed: int = 0,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One point per alpha: clean accuracy (full `test`) and robust accuracy (its first images)."""
    x, y = test
    temps = {"temperature_std": temperature_std, "temperature_rob": temperature_rob}
    logits_std, logits_rob = logits_of(standard, x), logits_of(robust, x)
    x_sub, y_sub = x[: settings.subset], y[: settings.subset]
    points = []
    for alpha in sorted(settings.alphas):
        mix = MixedClassifier(standard, robust, alpha=alpha, **temps)
        rob_acc, seconds = robust_accuracy(mix, x_sub, y_sub, eps=eps, settings=settings, seed=seed)
        point = {
            "alpha": alpha,
            "clean_acc": clean_accuracy_at(logits_std, logits_rob, y.cpu(), alpha=alpha, **temps),
            "robust_acc": rob_acc,
            "seconds": seconds,
        }
        points.append(point)
        if on_point is not None:
            on_point(point)
    return points


def choose(
    points: Sequence[dict[str, Any]],
    *,
    tolerance: float,
    reference: float | None = None,
    key: str = "alpha",
) -> dict[str, Any]:
    """The most accurate point whose robust accuracy is within `tolerance` of `reference`
    (default: the most robust point's); with none that close, the most robust point."""
    best = max(points, key=lambda p: (p["robust_acc"], p["clean_acc"], p[key]))
    target = best["robust_acc"] if reference is None else reference
    allowed = [p for p in points if p["robust_acc"] >= target - tolerance]
    if not allowed:
        return best
    return max(allowed, key=lambda p: (p["clean_acc"], p["robust_acc"], p[key]))
