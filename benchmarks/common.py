"""What the benchmark scripts share (imported as `common`: scripts run from this folder): where
results go and how they are written (a .md for people and a strict .json for programs, always
both), how numbers are formatted, and the data files of this machine."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from trustvision.runs import strict_json

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "docs/results"
# CIFAR-10 as this machine has it: a JPEG re-encoding beside the checkout (../shared/data).
CIFAR_ZIP = ROOT.parent / "shared/data/cifar10-jpeg.zip"


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "std": std, "n": len(finite)}


def pct(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage with `digits` decimals; "n/a" for a missing or NaN value."""
    return "n/a" if value is None or value != value else f"{100 * value:.{digits}f}"


def write_results(stem: str, markdown: str, body: dict[str, Any], *, out: Path = RESULTS) -> Path:
    """Write `out/<stem>.md` and `out/<stem>.json` (strict JSON: NaN as null); the .md path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(strict_json(body, indent=2) + "\n")
    path = out / f"{stem}.md"
    path.write_text(markdown.rstrip("\n") + "\n")
    return path
