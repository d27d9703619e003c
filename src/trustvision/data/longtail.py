"""Long-tailed subsets with the exponential class-count profile of Cao et al. (2019)."""

from __future__ import annotations

import math

import numpy as np

from trustvision.errors import ConfigError


def longtail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Images kept per class: `n_c = floor(n_max * IF ** (-c / (C - 1)))` for c = 0..C-1.

    CIFAR-10 (5,000 per class): IF=100 keeps 12,406 images, IF=50 keeps 13,996;
    CIFAR-100 (500 per class): IF=100 keeps 10,847.
    """
    if imbalance_factor < 1:
        raise ConfigError(
            f"`imbalance_factor={imbalance_factor}` must be at least 1 (the ratio of the largest "
            "to the smallest class; 1 keeps every class whole)"
        )
    if num_classes < 1 or n_max < 0:
        raise ConfigError(f"`num_classes={num_classes}`, `n_max={n_max}`: need one class or more")
    if num_classes == 1:
        return [n_max]
    return [
        math.floor(n_max * imbalance_factor ** (-c / (num_classes - 1))) for c in range(num_classes)
    ]


def longtail_indices(
    labels: np.ndarray, imbalance_factor: float, *, num_classes: int | None = None
) -> np.ndarray:
    """Sorted indices of a long-tailed subset: class c keeps its first `n_c` samples in index order.

    `n_max` is the size of the largest class; a class smaller than its `n_c` keeps all it has.
    Class 0 is the head and the last class the tail, as in Cao et al.'s profile.

    Deviation from the authors' code, on purpose: FedLoGe's `IMBALANCECIFAR10` (from Cao et
    al.'s LDAM-DRW) shuffles each class's indices with the global `np.random.seed(0)` stream
    before taking the first `n_c`. We take the first `n_c` in index order instead: the same
    counts, a subset that is a pure function of the labels, and no global RNG state.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    sizes = np.bincount(labels, minlength=num_classes)
    keep = longtail_counts(int(sizes.max()), num_classes, imbalance_factor)
    parts = [np.flatnonzero(labels == c)[:n] for c, n in enumerate(keep)]
    return np.sort(np.concatenate(parts)).astype(np.int64)
