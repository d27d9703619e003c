"""Long-tailed subsets (Cao et al. profile) and FedLoGe's Dirichlet split and local test sets."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustvision.data.longtail import longtail_counts, longtail_indices
from trustvision.data.partition import (
    class_counts,
    client_test_indices,
    dirichlet_partition,
    local_test_counts,
)
from trustvision.errors import ConfigError, DataError

FAST = settings(max_examples=40, deadline=None)


def balanced_labels(per_class: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Balanced labels in a shuffled order, like a real training set."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


# --- long-tailed subsets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_class", "num_classes", "imbalance", "kept"),
    [(5000, 10, 100, 12_406), (5000, 10, 50, 13_996), (500, 100, 100, 10_847)],
)
def test_longtail_sizes_match_the_paper(per_class, num_classes, imbalance, kept):
    counts = longtail_counts(per_class, num_classes, imbalance)
    assert sum(counts) == kept
    assert counts[0] == per_class and counts[-1] == per_class // imbalance
    indices = longtail_indices(balanced_labels(per_class, num_classes), imbalance)
    assert len(indices) == kept


def test_longtail_counts_follow_the_formula():
    counts = longtail_counts(5000, 10, 100)
    assert counts == [math.floor(5000 * 100 ** (-c / 9)) for c in range(10)]
    assert counts == sorted(counts, reverse=True)


def test_longtail_keeps_the_first_samples_of_each_class_in_index_order():
    labels = balanced_labels(50, 5, seed=1)
    kept = longtail_indices(labels, 10)
    assert np.all(np.diff(kept) > 0)
    for c, n in enumerate(longtail_counts(50, 5, 10)):
        np.testing.assert_array_equal(kept[labels[kept] == c], np.flatnonzero(labels == c)[:n])


def test_imbalance_factor_one_keeps_everything_and_below_one_is_refused():
    labels = balanced_labels(7, 3)
    np.testing.assert_array_equal(longtail_indices(labels, 1), np.arange(21))
    with pytest.raises(ConfigError, match=r"`imbalance_factor=0.5`"):
        longtail_counts(10, 3, 0.5)


# --- Dirichlet partition ---------------------------------------------------------------------


@FAST
@given(
    labels=st.lists(st.integers(0, 9), min_size=0, max_size=300).map(np.array),
    num_clients=st.integers(1, 12),
    alpha=st.sampled_from([0.05, 0.5, 1.0, 10.0]),
    seed=st.integers(0, 2**32),
)
def test_every_sample_lands_on_exactly_one_client(labels, num_clients, alpha, seed):
    parts = dirichlet_partition(labels, num_clients=num_clients, alpha=alpha, seed=seed)
    assert len(parts) == num_clients
    merged = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(merged), np.arange(len(labels)))
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)


@FAST
@given(seed=st.integers(0, 2**32), other=st.integers(0, 2**32), alpha=st.sampled_from([0.5, 1.0]))
def test_the_partition_is_a_pure_function_of_the_seed(seed, other, alpha):
    labels = balanced_labels(100, 10)
    first = dirichlet_partition(labels, num_clients=20, alpha=alpha, seed=seed)
    again = dirichlet_partition(labels, num_clients=20, alpha=alpha, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    if other != seed:
        different = dirichlet_partition(labels, num_clients=20, alpha=alpha, seed=other)
        assert not all(np.array_equal(a, b) for a, b in zip(first, different, strict=True))


def test_partition_matches_the_reference_recipe():
    labels = balanced_labels(60, 4, seed=2)
    rng = np.random.Generator(np.random.PCG64(11))
    owner = np.empty(len(labels), dtype=np.int64)
    for c in range(4):
        members = np.flatnonzero(labels == c)
        p = rng.dirichlet(np.full(5, 0.5))
        owner[members] = rng.choice(5, size=len(members), p=p)
    parts = dirichlet_partition(labels, num_clients=5, alpha=0.5, seed=11)
    for k in range(5):
        np.testing.assert_array_equal(parts[k], np.flatnonzero(owner == k))


def test_small_alpha_allows_empty_clients():
    parts = dirichlet_partition(balanced_labels(5, 2), num_clients=50, alpha=0.05, seed=0)
    assert any(len(p) == 0 for p in parts) and sum(len(p) for p in parts) == 10


def test_large_alpha_is_close_to_even():
    labels = balanced_labels(2000, 2)
    parts = dirichlet_partition(labels, num_clients=4, alpha=1000.0, seed=3)
    sizes = np.array([len(p) for p in parts])
    assert np.all(np.abs(sizes - 1000) < 150)


def test_bad_partition_arguments_are_refused():
    with pytest.raises(ConfigError, match=r"`alpha=0`"):
        dirichlet_partition(np.zeros(3, int), num_clients=2, alpha=0, seed=0)
    with pytest.raises(ConfigError, match=r"`num_clients=0`"):
        dirichlet_partition(np.zeros(3, int), num_clients=0, alpha=1, seed=0)


# --- per-client test sets --------------------------------------------------------------------


def split_clients(seed=0, alpha=0.5, num_clients=8):
    train = np.repeat(np.arange(10), [500, 300, 200, 120, 80, 50, 30, 20, 10, 5])
    test = balanced_labels(100, 10, seed=seed + 1)
    parts = dirichlet_partition(train, num_clients=num_clients, alpha=alpha, seed=seed)
    return train, test, [train[p] for p in parts]


@FAST
@given(seed=st.integers(0, 2**16), alpha=st.sampled_from([0.1, 0.5, 1.0]), k=st.integers(1, 10))
def test_local_test_counts_follow_the_formula(seed, alpha, k):
    train, test, client_labels = split_clients(seed, alpha, k)
    local = client_test_indices(client_labels, test, num_train=len(train), seed=seed)
    for labels_k, indices in zip(client_labels, local, strict=True):
        counts = class_counts(labels_k, 10)
        wanted = [math.floor(Fraction(int(n), len(train)) * len(test)) for n in counts]
        assert class_counts(test[indices], 10).tolist() == wanted


def test_local_test_sets_draw_without_replacement_and_are_seeded():
    train, test, client_labels = split_clients()
    first = client_test_indices(client_labels, test, num_train=len(train), seed=5)
    again = client_test_indices(client_labels, test, num_train=len(train), seed=5)
    other = client_test_indices(client_labels, test, num_train=len(train), seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert all(len(np.unique(idx)) == len(idx) for idx in first)  # no class is exhausted here


def test_an_exhausted_class_takes_every_image_then_draws_with_replacement():
    test = np.array([0, 0, 0, 1, 1, 1])  # 3 test images per class
    client = [np.array([0] * 9 + [1])]  # 9 of 10 training images are class 0: wants 5 of class 0
    (indices,) = client_test_indices(client, test, num_train=10, seed=0)
    class0 = indices[test[indices] == 0]
    assert len(class0) == 5 and set(class0.tolist()) == {0, 1, 2}
    assert local_test_counts(client, num_train=10, num_test=6, num_classes=2).tolist() == [[5, 0]]


def test_class_counts_and_its_range_check():
    assert class_counts(np.array([0, 2, 2]), 4).tolist() == [1, 0, 2, 0]
    with pytest.raises(DataError, match=r"num_classes=2"):
        class_counts(np.array([0, 2]), 2)
