"""Helpers shared by the benchmark scripts (imported as `common`: scripts run from this folder)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

ROOT = Path(__file__).parents[1]
# CIFAR-10 as this machine has it: a JPEG re-encoding beside the checkout (../shared/data).
CIFAR_ZIP = ROOT.parent / "shared/data/cifar10-jpeg.zip"


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "std": std, "n": len(finite)}
