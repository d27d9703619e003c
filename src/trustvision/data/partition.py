"""Index splits: validation hold-outs, non-IID client splits (per-class Dirichlet) and
per-client test sets, as in FedLoGe."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trustvision.errors import ConfigError, DataError
from trustvision.seeds import derive_seed


def make_rng(seed: int) -> np.random.Generator:
    """A numpy Generator on PCG64 seeded from `seed`."""
    return np.random.Generator(np.random.PCG64(seed))


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Samples per class, int64 of length `num_classes`."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels span {labels.min()}..{labels.max()}, outside `num_classes={num_classes}`"
        )
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def validation_split(
    labels: np.ndarray, *, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions `(kept, held)` into `labels`: a stratified, seeded validation hold-out.

    Class c with n_c samples gives `fraction * n_c` of them to `held`, rounded stochastically
    (the floor, plus one with the remainder's probability), so that small classes are held out
    at the same expected rate as large ones instead of never. A class keeps at least one
    sample for training; a class with a single sample is never held out. The result is a pure
    function of (labels, fraction, seed): every run with the same seed holds out the same
    samples, whatever else it does.
    """
    if not 0 <= fraction < 1:
        raise ConfigError(
            f"`data.validation={fraction}` must be a fraction in [0, 1): the share of the "
            "training images held out for validation (e.g. 0.1; 0 holds out none)"
        )
    labels = np.asarray(labels, dtype=np.int64)
    held = np.zeros(len(labels), dtype=bool)
    if fraction == 0 or labels.size == 0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rng = make_rng(seed)
    for c in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        share = fraction * len(members)
        count = int(share) + int(rng.random() < share - int(share))
        count = min(count, len(members) - 1)
        if count > 0:
            held[rng.choice(members, size=count, replace=False)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def cover_every_class(
    labels: np.ndarray, trained: list[np.ndarray], held: list[np.ndarray], *, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`(trained, held)` index lists per client, with one more image held out for each class
    that no client holds out but some client trains on twice or more.

    Per-client stochastic rounding leaves the rarest classes of a long tail split over many
    clients (CIFAR-100-LT, ImageNet-LT) with no validation image anywhere, and a balanced
    validation accuracy that silently skips them. The lender and the image are drawn from
    `(seed, "validation-cover", c)`; a class whose clients each hold a single image stays
    uncovered (holding it out would take the class away from that client's training).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not any(len(h) for h in held) or labels.size == 0:
        return trained, held  # no validation asked for (or no data): nothing to cover
    trained, held = list(trained), list(held)
    num_classes = int(labels.max()) + 1
    covered = np.bincount(labels[np.concatenate(held)], minlength=num_classes) > 0
    counts = np.stack([np.bincount(labels[t], minlength=num_classes) for t in trained])
    for c in np.flatnonzero(~covered):
        lenders = np.flatnonzero(counts[:, c] >= 2)
        if len(lenders) == 0:
            continue
        rng = make_rng(derive_seed(seed, "validation-cover", int(c)))
        k = int(rng.choice(lenders))
        pick = rng.choice(trained[k][labels[trained[k]] == c])
        trained[k] = trained[k][trained[k] != pick]
        held[k] = np.sort(np.append(held[k], pick))
    return trained, held


def dirichlet_partition(
    labels: np.ndarray, *, num_clients: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Sorted training indices per client: per class, p ~ Dir(alpha * 1_K), samples drawn from p.

    Classes are visited in order 0..C-1; for each, one Dirichlet draw over the K clients and one
    categorical draw per sample of that class (in index order), all from one PCG64 stream
    seeded by `seed`. No minimum client size: a client may get few samples or none.
    """
    if num_clients < 1:
        raise ConfigError(f"`num_clients={num_clients}` must be at least 1")
    if not alpha > 0:
        raise ConfigError(f"`alpha={alpha}` must be positive (smaller is more skewed, e.g. 0.5)")
    labels = np.asarray(labels, dtype=np.int64)
    rng = make_rng(seed)
    owner = np.zeros(len(labels), dtype=np.int64)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        p = rng.dirichlet(np.full(num_clients, float(alpha)))
        owner[members] = rng.choice(num_clients, size=len(members), p=p)
    return [np.flatnonzero(owner == k) for k in range(num_clients)]


def local_test_counts(
    client_train_labels: Sequence[np.ndarray], *, num_train: int, num_test: int, num_classes: int
) -> np.ndarray:
    """(K, C) test images per client and class: floor(n_kc / num_train * num_test), exactly."""
    if num_train < 1:
        raise ConfigError(f"`num_train={num_train}` must be at least 1")
    train = np.stack([class_counts(y, num_classes) for y in client_train_labels])
    return train * num_test // num_train  # integer floor: no float rounding at exact multiples


def client_test_indices(
    client_train_labels: list[np.ndarray], test_labels: np.ndarray, *, num_train: int, seed: int
) -> list[np.ndarray]:
    """Sorted test indices per client, matching its training class mix (FedLoGe's local test sets).

    Client k gets, per class c, floor(n_kc / num_train * N_test) images of class c drawn
    without replacement from the balanced test set; clients may share images. When a class
    needs more images than the test set has, all of them are taken and the rest drawn with
    replacement, so the count always follows the formula. (The official code instead builds
    a set, which silently drops the duplicates; this difference is deliberate.)
    """
    if not client_train_labels:
        return []
    test_labels = np.asarray(test_labels, dtype=np.int64)
    highest = [int(np.max(y, initial=-1)) for y in (test_labels, *client_train_labels)]
    num_classes = max(highest) + 1
    counts = local_test_counts(
        client_train_labels, num_train=num_train, num_test=len(test_labels), num_classes=num_classes
    )
    pools = [np.flatnonzero(test_labels == c) for c in range(num_classes)]
    rng = make_rng(seed)
    return [_draw_client(rng, pools, row) for row in counts]


def _draw_client(
    rng: np.random.Generator, pools: list[np.ndarray], wanted: np.ndarray
) -> np.ndarray:
    parts = [
        _draw(rng, pool, int(n), label=c)
        for c, (pool, n) in enumerate(zip(pools, wanted, strict=True))
    ]
    return np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *parts]))


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int, *, label: int) -> np.ndarray:
    """`n` indices from `pool`: without replacement, then with replacement once exhausted."""
    if n <= len(pool):
        return rng.choice(pool, size=n, replace=False)
    if len(pool) == 0:
        raise DataError(
            f"class `{label}` has no test images but a client needs {n}: check the test labels"
        )
    extra = rng.choice(pool, size=n - len(pool), replace=True)
    return np.concatenate([rng.permutation(pool), extra])
