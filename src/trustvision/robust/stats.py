"""Binomial confidence bounds (Clopper-Pearson), for accuracies and for randomized smoothing."""

from __future__ import annotations

from scipy.stats import beta


def clopper_pearson(successes: int, trials: int, *, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = (
        1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    )
    return low, high


def lower_confidence_bound(successes: int, trials: int, *, alpha: float) -> float:
    """One-sided (1 - alpha) lower bound on a binomial proportion (Cohen et al.'s pA)."""
    if successes <= 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))
