"""Classification metrics as pure functions: top-1, per-class, accuracy by frequency group.

Predictions and labels may be NumPy arrays, torch tensors or sequences of class indices.
A class absent from the labels has accuracy NaN, and means skip NaNs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# FedLoGe's head/middle/tail cuts: cumulative share of the training images.
HEAD_SHARE = 0.75
MIDDLE_SHARE = 0.95
# The usual many/medium/few-shot bounds on a class's training images (Liu et al. 2019).
MANY_ABOVE = 100
FEW_BELOW = 20


def _as_array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1)


def confusion_matrix(preds: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Counts, (num_classes, num_classes) int64: entry [t, p] = images of class t predicted p."""
    preds, labels = _as_array(preds).astype(np.int64), _as_array(labels).astype(np.int64)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.size} predictions for {labels.size} labels")
    for name, values in (("predictions", preds), ("labels", labels)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got {values.min()}..{values.max()}"
            )
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def accuracy(preds: Any, labels: Any) -> float:
    """Fraction of correct predictions; NaN for no samples."""
    preds, labels = _as_array(preds), _as_array(labels)
    return float(np.mean(preds == labels)) if labels.size else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of every class from a confusion matrix; NaN for classes absent from the labels."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1)
    hits = np.diag(cm)
    return np.divide(hits, support, out=np.full_like(hits, np.nan), where=support > 0)


def frequency_groups(train_counts: Any) -> dict[str, np.ndarray]:
    """Class indices of head/middle/tail and many/medium/few, from training images per class.

    Head/middle/tail follow FedLoGe's `shot_split` (util/util.py): sort the classes by
    count, descending (ties keep class order), and let `before` be the share of all training
    images held by the classes ranked above a class. A class is head while before < 0.75,
    middle while before < 0.95, tail otherwise: the class that crosses 75% is the last head
    class, the one that crosses 95% the last middle class.
    Many/medium/few: more than 100 / 20 to 100 / fewer than 20 training images.
    """
    counts = _as_array(train_counts).astype(np.int64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("train_counts must hold at least one training image")
    order = np.argsort(-counts, kind="stable")
    before = (np.cumsum(counts[order]) - counts[order]) / total
    head_rank = before < HEAD_SHARE
    middle_rank = ~head_rank & (before < MIDDLE_SHARE)
    return {
        "head": np.sort(order[head_rank]),
        "middle": np.sort(order[middle_rank]),
        "tail": np.sort(order[~head_rank & ~middle_rank]),
        "many": np.flatnonzero(counts > MANY_ABOVE),
        "medium": np.flatnonzero((counts >= FEW_BELOW) & (counts <= MANY_ABOVE)),
        "few": np.flatnonzero(counts < FEW_BELOW),
    }


def group_accuracy(per_class_acc: Any, groups: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean per-class accuracy of each group, skipping NaN classes; NaN for an empty group."""
    acc = np.asarray(per_class_acc, dtype=np.float64)
    return {
        name: _nanmean(acc[np.asarray(index, dtype=np.int64)]) for name, index in groups.items()
    }


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def summarize(
    preds: Any, labels: Any, num_classes: int, train_counts: Any | None = None
) -> dict[str, Any]:
    """`top1`, `per_class` (list) and, given training counts, each group's accuracy, as floats.

    Missing values are NaN floats (Python's json writes them as `NaN`).
    """
    per_class = per_class_accuracy(confusion_matrix(preds, labels, num_classes))
    result: dict[str, Any] = {
        "top1": accuracy(preds, labels),
        "per_class": [float(a) for a in per_class],
    }
    if train_counts is not None:
        if _as_array(train_counts).size != num_classes:
            raise ValueError(f"train_counts must have {num_classes} entries, one per class")
        result.update(group_accuracy(per_class, frequency_groups(train_counts)))
    return result
