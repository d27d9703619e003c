"""Metrics against hand-computed examples and a literal reading of FedLoGe's group rule."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trustvision.train.metrics import (
    accuracy,
    confusion_matrix,
    frequency_groups,
    group_accuracy,
    per_class_accuracy,
    summarize,
)

PREDS = [0, 1, 1, 2, 2, 2]
LABELS = [0, 1, 2, 2, 2, 0]
# CIFAR-10-LT, imbalance factor 100: floor(5000 * 100 ** (-c / 9)), 12,406 images.
CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(PREDS, LABELS, 4)

    expected = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)


def test_accepts_tensors() -> None:
    cm = confusion_matrix(torch.tensor(PREDS), torch.tensor(LABELS), 4)

    assert cm.sum() == 6
    assert accuracy(torch.tensor(PREDS), torch.tensor(LABELS)) == pytest.approx(4 / 6)


def test_out_of_range_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="labels"):
        confusion_matrix([0, 1], [0, 5], 3)


def test_accuracy_of_nothing_is_nan() -> None:
    assert math.isnan(accuracy([], []))


def test_per_class_accuracy_is_nan_for_absent_classes() -> None:
    acc = per_class_accuracy(confusion_matrix(PREDS, LABELS, 4))

    np.testing.assert_allclose(acc[:3], [1 / 2, 1.0, 2 / 3])
    assert math.isnan(acc[3])


def test_cifar10_if100_groups_worked_by_hand() -> None:
    # Total 12,406; 75% = 9,304.5 and 95% = 11,785.7 images. Images held by the classes
    # ranked above each class: 0, 5000, 7997 (< 75%: head), 9793, 10870, 11515 (< 95%:
    # middle), 11902, 12134, 12273, 12356 (tail).
    groups = frequency_groups(CIFAR10_IF100)

    np.testing.assert_array_equal(groups["head"], [0, 1, 2])
    np.testing.assert_array_equal(groups["middle"], [3, 4, 5])
    np.testing.assert_array_equal(groups["tail"], [6, 7, 8, 9])
    np.testing.assert_array_equal(groups["many"], [0, 1, 2, 3, 4, 5, 6, 7])  # > 100
    np.testing.assert_array_equal(groups["medium"], [8, 9])  # 83 and 50
    assert groups["few"].size == 0


def test_groups_follow_counts_not_class_order() -> None:
    counts = [50, 5000, 83, 1796, 2997, 139, 645, 1077, 232, 387]  # CIFAR10_IF100 shuffled

    groups = frequency_groups(counts)

    np.testing.assert_array_equal(groups["head"], [1, 3, 4])
    np.testing.assert_array_equal(groups["middle"], [6, 7, 9])
    np.testing.assert_array_equal(groups["tail"], [0, 2, 5, 8])


def test_cut_boundaries() -> None:
    # Shares before each class: 0, 0.75, 0.95. The class that reaches 75% exactly is the
    # last head class; the next one starts at 75% and is middle.
    groups = frequency_groups([75, 20, 5])

    assert groups["head"].tolist() == [0]
    assert groups["middle"].tolist() == [1]
    assert groups["tail"].tolist() == [2]


def test_many_medium_few_boundaries() -> None:
    groups = frequency_groups([101, 100, 20, 19, 0])

    assert groups["many"].tolist() == [0]
    assert groups["medium"].tolist() == [1, 2]
    assert groups["few"].tolist() == [3, 4]


def _fedloge_shot_split(counts: list[int]) -> dict[str, list[int]]:
    """FedLoGe's shot_split, read literally: head up to the class whose cumulative share
    interval (before, after] contains 75%, middle up to the one containing 95%."""
    order = sorted(range(len(counts)), key=lambda c: -counts[c])  # stable: ties by index
    total, running, cuts = sum(counts), 0, {}
    for rank, c in enumerate(order):
        before, running = Fraction(running, total), running + counts[c]
        for name, share in (("head", Fraction(3, 4)), ("middle", Fraction(19, 20))):
            if before < share <= Fraction(running, total):
                cuts[name] = rank
    head, middle = cuts.get("head", 0), cuts.get("middle", 0)
    return {
        "head": sorted(order[: head + 1]),
        "middle": sorted(order[head + 1 : middle + 1]),
        "tail": sorted(order[middle + 1 :]),
    }


@settings(deadline=None)  # a loaded CI machine is no reason to fail
@given(st.lists(st.integers(0, 6000), min_size=1, max_size=30).filter(lambda c: sum(c) > 0))
def test_matches_fedloge_rule(counts: list[int]) -> None:
    groups = frequency_groups(counts)

    reference = _fedloge_shot_split(counts)
    assert {k: groups[k].tolist() for k in reference} == reference


@pytest.mark.filterwarnings("error")
def test_group_accuracy_is_nan_safe() -> None:
    per_class = np.array([1.0, 0.5, np.nan, 0.0])
    groups = {"a": np.array([0, 1]), "b": np.array([2]), "c": np.array([], int), "d": [2, 3]}

    result = group_accuracy(per_class, groups)

    assert result["a"] == pytest.approx(0.75)
    assert math.isnan(result["b"]) and math.isnan(result["c"])
    assert result["d"] == 0.0


def test_summarize_with_counts_is_json_friendly() -> None:
    # Class accuracies 1/2, 1, 2/3, NaN; counts put class 3 and 0 at the head.
    counts = [300, 50, 10, 1000]

    summary = summarize(np.array(PREDS), np.array(LABELS), 4, train_counts=counts)

    assert summary["top1"] == pytest.approx(4 / 6)
    np.testing.assert_allclose(summary["per_class"][:3], [0.5, 1.0, 2 / 3])
    assert math.isnan(summary["per_class"][3])
    # Sorted: 1000 (before 0), 300 (before 0.735: head), 50 (before 0.956: tail), 10 (tail).
    assert summary["head"] == pytest.approx(0.5)  # class 3 is NaN, class 0 is 1/2
    assert math.isnan(summary["middle"])
    assert summary["tail"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert summary["many"] == pytest.approx(0.5)
    assert summary["medium"] == pytest.approx(1.0)
    assert summary["few"] == pytest.approx(2 / 3)
    assert all(type(v) is float for v in summary["per_class"])
    json.dumps(summary)


def test_summarize_without_counts_has_no_groups() -> None:
    summary = summarize(PREDS, LABELS, 4)

    assert set(summary) == {"top1", "per_class"}
