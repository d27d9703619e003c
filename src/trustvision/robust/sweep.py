"""The validation sweeps that choose a mix's knobs, and the rule that chooses.

Fixed mix: a grid over alpha x s_g x s_h. Clean accuracy at every point comes from one pass
of each base over the validation images (a constant mix is a closed-form function of the two
sets of logits); robust accuracy needs attacks (`SweepSettings.attack`, AutoAttack's) on the
first `subset` validation images, point by point as `attack_in_order` says. At alpha 0 the mix
is g alone and s_h is unused, at alpha 1 it is h alone and s_g is unused: those points are
attacked once per value of the temperature in use, and the unused one is recorded as None.

Adaptive mix: a grid over the gate's knobs (gamma bias x scale x alpha range) x s_g x s_h once
the mixing network has trained; clean accuracy again from cached base logits and the mixing
network's normalised gamma.

The images are whatever the caller passes: the commands pass validation images
(`evaluate.validation_pixels`), never test images.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from trustvision.robust.autoattack import attack_chunk, build_attackers
from trustvision.robust.config import SweepSettings
from trustvision.robust.mixing import (
    AdaptiveMixedClassifier,
    MixedClassifier,
    gate_log_weights,
    log_weights,
    mix_log_probs,
)
from trustvision.robust.pixels import device_of, logits_of

FIXED_KNOBS = ("alpha", "temperature_std", "temperature_rob")
ADAPTIVE_KNOBS = (
    "gamma_bias",
    "gamma_scale",
    "alpha_low",
    "alpha_high",
    "temperature_std",
    "temperature_rob",
)
GATE_KNOBS = ("gamma_bias", "gamma_scale", "alpha_low", "alpha_high")
KNOB_NAMES = frozenset(FIXED_KNOBS + ADAPTIVE_KNOBS)
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


class Robustness(NamedTuple):
    """A point's robust accuracy under the sweep's attacks, the seconds they took, and whether
    all of them ran (False: the attacks stopped once the point could not be admitted, and
    `acc` is an upper bound below the admission threshold)."""

    acc: float
    seconds: float
    complete: bool = True


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    settings: SweepSettings,
    seed: int = 0,
    give_up_below: float | None = None,
) -> Robustness:
    """Accuracy under the sweep's AutoAttack attacks (worst case per point). With
    `give_up_below`, the attacks stop as soon as the accuracy is sure to end below it."""
    attackers = build_attackers(model, eps=eps, version="custom", custom=settings.attack, seed=seed)
    start = time.perf_counter()
    floor = 0.0 if give_up_below is None else give_up_below * len(y)
    result = attack_chunk(attackers, x, y, batch_size=settings.attack.batch_size, stop_below=floor)
    robust = sum(f is None for f in result.fooled_by) / max(len(y), 1)
    return Robustness(robust, time.perf_counter() - start, not result.skipped)


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


def point_key(point: Mapping[str, Any]) -> str:
    """A grid point's knobs (alpha, gate, temperatures) as one key, for a resumed sweep."""
    knobs = {k: v for k, v in point.items() if k in KNOB_NAMES}
    return json.dumps(knobs, sort_keys=True)


def alpha_sweep(
    standard: nn.Module,
    robust: nn.Module,
    *,
    images: tuple[Tensor, Tensor],
    eps: float,
    settings: SweepSettings,
    reference: float | None = None,
    seed: int = 0,
    on_point: OnPoint | None = None,
    done: Mapping[str, Robustness] | None = None,
) -> list[dict[str, Any]]:
    """One point per (alpha, s_g, s_h): clean accuracy on all of `images`, robust accuracy on
    their first `settings.subset`, attacked as `attack_in_order` says (lazily, given the
    robust base's `reference`). A point in `done` (by `point_key`: its `Robustness`, from an
    interrupted sweep of the same settings) is not attacked again."""
    x, y = images
    logits_std, logits_rob = logits_of(standard, x), logits_of(robust, x)
    x_sub, y_sub = x[: settings.subset], y[: settings.subset]
    points = []
    for alpha, s_g, s_h in fixed_grid(settings):
        point: dict[str, Any] = {"alpha": alpha, "temperature_std": s_g, "temperature_rob": s_h}
        temps = temperatures(point)
        clean = clean_accuracy_at(logits_std, logits_rob, y.cpu(), alpha=alpha, **temps)
        points.append({**point, "clean_acc": clean})

    def attack(point: dict[str, Any], give_up_below: float | None) -> Robustness:
        mix = MixedClassifier(standard, robust, alpha=point["alpha"], **temperatures(point))
        return robust_accuracy(
            mix, x_sub, y_sub, eps=eps, settings=settings, seed=seed, give_up_below=give_up_below
        )

    floor = None if reference is None else reference - settings.tolerance
    attack_in_order(points, attack, floor=floor, on_point=on_point, done=done)
    return points


def attack_in_order(
    points: Sequence[dict[str, Any]],
    attack: Callable[[dict[str, Any], float | None], Robustness],
    *,
    floor: float | None,
    on_point: OnPoint | None = None,
    done: Mapping[str, Robustness] | None = None,
) -> None:
    """Give each point its `robust_acc`, `seconds` and `robust_complete` from `attack` (or
    from `done`, by `point_key`).

    Without a `floor` every point is attacked, in order. With one, `choose` admits a point
    whose robust accuracy reaches it and takes the most accurate admitted one; so the points
    are attacked in order of clean accuracy, and once one is admitted only those as accurate
    as it are attacked too: the rest could not be chosen (their `robust_acc` is None). A
    point's attacks stop once it cannot reach the floor any more (its `robust_acc` is then an
    upper bound, `robust_complete` False); only a fully attacked point is admitted. If none
    is, `choose` takes the most robust point, so the stopped points are then attacked fully,
    highest bound first, until no bound left can beat the best exact value. Either way the
    choice is the one attacking every point fully would give.
    """
    order = sorted(points, key=lambda p: -p["clean_acc"]) if floor is not None else points
    admitted_at: float | None = None
    for point in order:
        if admitted_at is not None and point["clean_acc"] < admitted_at:
            point.update(robust_acc=None, seconds=0.0)
            continue
        kept = _measure(point, attack, floor=floor, on_point=on_point, done=done)
        if floor is not None and kept.complete and kept.acc >= floor and admitted_at is None:
            admitted_at = point["clean_acc"]
    if floor is not None and admitted_at is None:
        _settle_most_robust(points, attack, on_point=on_point, done=done)


def _settle_most_robust(
    points: Sequence[dict[str, Any]],
    attack: Callable[[dict[str, Any], float | None], Robustness],
    *,
    on_point: OnPoint | None,
    done: Mapping[str, Robustness] | None,
) -> None:
    """Attack stopped points fully, highest upper bound first, until the best exact robust
    accuracy is above every bound left (ties are attacked: `choose` breaks them by knobs)."""
    stopped = sorted(
        (p for p in points if p["robust_complete"] is False), key=lambda p: -p["robust_acc"]
    )
    best = max((p["robust_acc"] for p in points if p["robust_complete"]), default=-1.0)
    for point in stopped:
        if point["robust_acc"] < best:
            break
        best = max(best, _measure(point, attack, floor=None, on_point=on_point, done=done).acc)


def _measure(
    point: dict[str, Any],
    attack: Callable[[dict[str, Any], float | None], Robustness],
    *,
    floor: float | None,
    on_point: OnPoint | None,
    done: Mapping[str, Robustness] | None,
) -> Robustness:
    """Give `point` its robustness: the kept one, unless it is missing or an upper bound that
    could still reach `floor` (every bound, without a floor), which is attacked again."""
    kept = (done or {}).get(point_key(point))
    if kept is None or (not kept.complete and (floor is None or kept.acc >= floor)):
        kept = attack(point, floor)
    point.update(robust_acc=kept.acc, seconds=kept.seconds, robust_complete=kept.complete)
    if on_point is not None:
        on_point(point)
    return kept


@torch.no_grad()
def normalized_gamma(mix: AdaptiveMixedClassifier, x: Tensor, *, batch_size: int = 500) -> Tensor:
    """BN(gamma) of the mixing network in evaluation mode (gamma' before scale and bias), on
    the CPU."""
    device = device_of(mix)
    parts = [
        mix.forward_with_gamma(x[i : i + batch_size].to(device))[1].cpu()
        for i in range(0, len(x), batch_size)
    ]
    return (torch.cat(parts) - float(mix.gamma_bias)) / float(mix.gamma_scale)


def knob_values(mix: AdaptiveMixedClassifier) -> dict[str, float]:
    """The adaptive mix's knobs (gate and temperatures) as plain numbers."""
    return {
        "gamma_bias": float(mix.gamma_bias),
        "gamma_scale": float(mix.gamma_scale),
        "alpha_low": float(mix.alpha_low),
        "alpha_high": float(mix.alpha_high),
        "temperature_std": mix.temperature_std,
        "temperature_rob": mix.temperature_rob,
    }


def set_knobs(mix: AdaptiveMixedClassifier, point: dict[str, Any]) -> None:
    """Give the adaptive mix the knobs of a grid point (those it names)."""
    for key in GATE_KNOBS:
        if key in point:
            getattr(mix, key).fill_(float(point[key]))
    for key in ("temperature_std", "temperature_rob"):
        if key in point:
            setattr(mix, key, float(point[key]))


@contextmanager
def _knobs(mix: AdaptiveMixedClassifier, point: dict[str, Any]) -> Iterator[None]:
    """The mix with the knobs of `point` for the duration of a block."""
    before = knob_values(mix)
    set_knobs(mix, point)
    try:
        yield
    finally:
        set_knobs(mix, before)


def gate_grid(
    biases: Sequence[float],
    scales: Sequence[float],
    ranges: Sequence[tuple[float, float]],
    settings: SweepSettings,
) -> list[dict[str, float]]:
    """Every gamma bias x scale x alpha range x s_g x s_h, as knob dictionaries."""
    return [
        {
            "gamma_bias": bias,
            "gamma_scale": scale,
            "alpha_low": low,
            "alpha_high": high,
            "temperature_std": s_g,
            "temperature_rob": s_h,
        }
        for bias in _unique(biases)
        for scale in _unique(scales)
        for low, high in dict.fromkeys((float(a), float(b)) for a, b in ranges)
        for s_g in _unique(settings.temperatures_std)
        for s_h in _unique(settings.temperatures_rob)
    ]


def bias_sweep(
    mix: AdaptiveMixedClassifier,
    *,
    images: tuple[Tensor, Tensor],
    grid: Sequence[dict[str, float]],
    eps: float,
    settings: SweepSettings,
    reference: float | None = None,
    seed: int = 0,
    on_point: OnPoint | None = None,
    done: Mapping[str, Robustness] | None = None,
) -> list[dict[str, Any]]:
    """One point per knob setting of `grid` (`gate_grid`) of a trained adaptive mix in
    evaluation mode: clean accuracy on all of `images`, robust accuracy on their first
    `settings.subset`. The mix's own knobs are restored afterwards.

    Attacked as `attack_in_order` says: lazily, given the robust base's `reference`
    (admission: within `settings.tolerance` of it). A point in `done` (see `alpha_sweep`) is
    not attacked again.
    """
    x, y = images
    logits_std, logits_rob = logits_of(mix.standard, x), logits_of(mix.robust, x)
    normalized = normalized_gamma(mix, x)
    x_sub, y_sub = x[: settings.subset], y[: settings.subset]
    points: list[dict[str, Any]] = []
    for knobs in grid:
        log_a, log_b = gate_log_weights(
            normalized * knobs["gamma_scale"] + knobs["gamma_bias"],
            alpha_low=knobs["alpha_low"],
            alpha_high=knobs["alpha_high"],
        )
        out = mix_log_probs(
            logits_std,
            logits_rob,
            log_alpha=log_a,
            log_one_minus_alpha=log_b,
            temperature_std=knobs["temperature_std"],
            temperature_rob=knobs["temperature_rob"],
        )
        clean = float((out.argmax(1) == y.cpu()).float().mean())
        points.append({**knobs, "clean_acc": clean, "mean_alpha_clean": float(log_a.exp().mean())})

    def attack(point: dict[str, Any], give_up_below: float | None) -> Robustness:
        with _knobs(mix, point):
            return robust_accuracy(
                mix,
                x_sub,
                y_sub,
                eps=eps,
                settings=settings,
                seed=seed,
                give_up_below=give_up_below,
            )

    floor = None if reference is None else reference - settings.tolerance
    attack_in_order(points, attack, floor=floor, on_point=on_point, done=done)
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
    reference: float,
    key: str | tuple[str, ...] = "alpha",
) -> dict[str, Any]:
    """The most accurate point whose robust accuracy is within `tolerance` of `reference` (the
    robust base's); with none that close, the most robust point.

    `key` names the knobs (the first one breaks ties first; see `_preference`).
    """
    keys = (key,) if isinstance(key, str) else key
    points = [p for p in points if p["robust_acc"] is not None]  # not attacked: not a candidate
    best = max(points, key=lambda p: (p["robust_acc"], p["clean_acc"], *_preference(p, keys)))
    allowed = [p for p in points if p["robust_acc"] >= reference - tolerance]
    if not allowed:
        return best
    return max(allowed, key=lambda p: (p["clean_acc"], p["robust_acc"], *_preference(p, keys)))
