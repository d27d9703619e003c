"""The sweep's choice: the best validation value, from nothing but validation values."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal


def choose_trial(
    validation: Iterable[tuple[int, float]], direction: Literal["maximize", "minimize"]
) -> int | None:
    """The trial number with the best validation value; ties go to the lowest number.

    It receives (trial number, validation value) pairs and nothing else, so no test number
    can reach it. NaN values are never chosen; with no finite value the answer is None.
    """
    sign = 1.0 if direction == "maximize" else -1.0
    best: tuple[float, int] | None = None
    for number, value in validation:
        if math.isnan(value):
            continue
        key = (sign * value, -number)  # a larger key wins: better value, then lower number
        if best is None or key > best:
            best = key
    return None if best is None else -best[1]
