"""`data.validation`: a stratified, seeded hold-out of the training split, in every system.

Images in the toy data sets encode their own index (two pixels: index // 256, index % 256),
so a test can tell exactly which images went where.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trustvision.config import DataConfig
from trustvision.data.dataset import ArraySplit, Dataset
from trustvision.data.loader import build_loaders
from trustvision.data.longtail import longtail_counts
from trustvision.data.partition import cover_every_class, validation_split
from trustvision.errors import ConfigError, DataError
from trustvision.federated.client import ClientValidation
from trustvision.federated.data import build_federation, client_split
from trustvision.federated.evaluate import balanced_accuracy, validation_evaluation

TEST_OFFSET = 50_000  # test images encode indices from here, so they never equal a training one


def _images(indices: np.ndarray) -> np.ndarray:
    pixels = np.stack([indices // 256, indices % 256], axis=1).astype(np.uint8)
    return pixels.reshape(len(indices), 1, 1, 2)


def _decode(images: np.ndarray | torch.Tensor) -> set[int]:
    flat = np.asarray(images).reshape(len(images), 2).astype(np.int64)
    return set((flat[:, 0] * 256 + flat[:, 1]).tolist())


def _dataset(n: int = 3000, n_test: int = 400, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = rng.choice(10, size=n, p=np.linspace(2, 0.1, 10) / np.linspace(2, 0.1, 10).sum())
    test_index = np.arange(TEST_OFFSET, TEST_OFFSET + n_test) % (256 * 256)
    return Dataset(
        name="toy",
        classes=tuple(str(c) for c in range(10)),
        train=ArraySplit(_images(np.arange(n)), labels.astype(np.int64)),
        test=ArraySplit(_images(test_index), np.arange(n_test, dtype=np.int64) % 10),
        mean=(0.5,),
        std=(0.2,),
        source="test",
    )


def test_split_is_disjoint_covers_everything_and_is_stratified() -> None:
    labels = _dataset().train.labels
    kept, held = validation_split(labels, fraction=0.2, seed=3)
    assert not set(kept) & set(held)
    assert sorted([*kept, *held]) == list(range(len(labels)))
    for c in range(10):
        members = int((labels == c).sum())
        held_c = int((labels[held] == c).sum())
        # stochastic rounding: floor or ceil of the exact share, never all of a class
        assert math.floor(0.2 * members) <= held_c <= min(math.ceil(0.2 * members), members - 1)


def test_split_is_a_pure_function_of_the_seed() -> None:
    labels = _dataset().train.labels
    first = validation_split(labels, fraction=0.1, seed=7)
    again = validation_split(labels, fraction=0.1, seed=7)
    other = validation_split(labels, fraction=0.1, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_small_classes_are_held_out_at_the_same_expected_rate() -> None:
    # 2,000 classes of two samples each: at 10% a class lends one sample with chance 0.2
    labels = np.repeat(np.arange(2000), 2)
    _, held = validation_split(labels, fraction=0.1, seed=0)
    assert 320 < len(held) < 480  # 400 expected (binomial std 18); plain rounding gives 0
    singles = np.arange(50)  # a class with one sample is never held out
    assert len(validation_split(singles, fraction=0.9, seed=0)[1]) == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_a_fraction_outside_zero_to_one_is_a_config_error(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"data\.validation"):
        validation_split(np.zeros(10, np.int64), fraction=fraction, seed=0)


def test_data_config_rejects_a_count() -> None:
    with pytest.raises(ValueError, match="validation"):
        DataConfig(validation=5000)


def test_loaders_hold_out_validation_from_training_and_never_touch_test() -> None:
    dataset = _dataset()
    loaders = build_loaders(
        dataset, DataConfig(validation=0.1, batch_size=10), seed=1, device=torch.device("cpu")
    )
    assert loaders.val is not None
    train, val = _decode(loaders.train.images), _decode(loaders.val.images)
    test = _decode(loaders.test.images)
    assert not train & val and not (train | val) & test
    assert train | val == set(range(len(dataset.train)))
    assert abs(len(val) - 0.1 * len(dataset.train)) <= 10  # one rounding per class at most
    assert loaders.train_counts.sum() == len(train)  # counts exclude the hold-out


def test_no_validation_when_the_fraction_is_zero() -> None:
    loaders = build_loaders(
        _dataset(), DataConfig(validation=0.0, batch_size=10), seed=1, device=torch.device("cpu")
    )
    assert loaders.val is None and loaders.train.num_samples == 3000


def test_long_tailed_runs_hold_out_from_the_long_tailed_set() -> None:
    dataset = _dataset()
    cfg = DataConfig(validation=0.1, imbalance_factor=10, batch_size=10)
    loaders = build_loaders(dataset, cfg, seed=0, device=torch.device("cpu"))
    assert loaders.val is not None
    val_counts = np.bincount(loaders.val.labels.numpy(), minlength=10)
    # stratified: the hold-out is long-tailed like the training images it came from
    assert val_counts[0] > val_counts[9]


def _federation(seed: int = 0, validation: float = 0.2):
    cfg = DataConfig(name="toy", validation=validation, batch_size=8)
    return build_federation(
        _dataset(), cfg, num_clients=6, alpha=0.5, seed=seed, device=torch.device("cpu")
    )


def test_every_client_holds_out_its_own_images_and_never_trains_on_them() -> None:
    federation = _federation()
    seen_train: set[int] = set()
    seen_val: set[int] = set()
    for client in federation.clients:
        train, val = _decode(client.train_images), _decode(client.val_images)
        assert not train & val
        assert not (train | val) & seen_train and not (train | val) & seen_val  # clients disjoint
        seen_train |= train
        seen_val |= val
        counts = np.bincount(client.train_labels.numpy(), minlength=10)
        assert np.array_equal(counts, client.class_counts)  # class counts of training images
    assert seen_train | seen_val == set(range(3000))
    assert 0.15 * 3000 < len(seen_val) < 0.25 * 3000
    labels = _dataset().train.labels  # the run summary's per-class count of the hold-outs
    held_out = np.bincount(labels[sorted(seen_val)], minlength=10).tolist()
    assert federation.describe()["val_counts"] == held_out
    assert not seen_val & _decode(federation.test_images)
    assert federation.train_counts.sum() == len(seen_train)


def test_client_hold_outs_are_seed_pure() -> None:
    first, again, other = _federation(seed=4), _federation(seed=4), _federation(seed=5)
    for a, b in zip(first.clients, again.clients, strict=True):
        assert torch.equal(a.val_images, b.val_images)
    assert any(
        not torch.equal(a.val_labels, b.val_labels) or len(a.val_labels) != len(b.val_labels)
        for a, b in zip(first.clients, other.clients, strict=True)
    )


def test_count_based_balanced_validation_equals_the_direct_computation() -> None:
    rng = np.random.default_rng(0)
    validations, all_preds, all_labels = [], [], []
    for k in range(5):
        labels = rng.choice(4, size=int(rng.integers(0, 30)), p=[0.6, 0.25, 0.1, 0.05])
        preds = np.where(rng.random(len(labels)) < 0.7, labels, rng.integers(0, 4, len(labels)))
        total = np.bincount(labels, minlength=4)
        correct = np.bincount(labels[preds == labels], minlength=4)
        validations.append(ClientValidation(k, total, {"generic": correct}))
        all_preds.append(preds)
        all_labels.append(labels)
    preds, labels = np.concatenate(all_preds), np.concatenate(all_labels)
    per_class = [np.mean(preds[labels == c] == c) for c in range(4) if (labels == c).any()]
    result = validation_evaluation(validations)
    assert result["generic"] == pytest.approx(float(np.mean(per_class)))
    assert balanced_accuracy(np.zeros(3), np.zeros(3)) != balanced_accuracy(
        np.zeros(3), np.zeros(3)
    )  # NaN without images


def test_local_validation_is_the_mean_over_clients() -> None:
    validations = [
        ClientValidation(0, np.array([4, 0]), {"local_masked": np.array([4, 0])}),
        ClientValidation(1, np.array([1, 1]), {"local_masked": np.array([0, 1])}),
        ClientValidation(2, np.array([0, 0]), {}),  # no validation images: left out
    ]
    assert validation_evaluation(validations)["local_masked"] == pytest.approx((1.0 + 0.5) / 2)


def test_the_reported_round_is_chosen_on_validation_never_on_test() -> None:
    from trustvision.federated.rundir import select_round

    # test accuracy falls as validation accuracy rises: the choice must follow validation
    history = [
        {"round": 5, "generic_val_acc": 0.60, "generic_acc": 0.90, "round_seconds": 1.0},
        {"round": 10, "generic_val_acc": 0.80, "generic_acc": 0.50},
        {"round": 15, "train_loss": 0.3},  # not evaluated
        {"round": 20, "generic_val_acc": 0.80, "generic_acc": 0.40},  # a tie: the later round
        {"round": 25, "generic_val_acc": 0.70, "generic_acc": 0.95},
    ]
    chosen = select_round(history, "generic_val_acc")
    assert chosen is not None
    assert chosen["round"] == 20 and chosen["generic_acc"] == 0.40
    assert chosen["selected_by"] == "validation" and "round_seconds" not in chosen
    assert select_round(history, "local_val_acc") is None
    # a round a client failed to evaluate measured fewer images: not comparable, not chosen
    history[3]["eval_failures"] = [{"client": 4, "error": "lost"}]
    assert select_round(history, "generic_val_acc")["round"] == 10  # type: ignore[index]
    only_failed = [history[3]]
    assert select_round(only_failed, "generic_val_acc")["round"] == 20  # type: ignore[index]


def test_more_clients_than_a_split_can_feed_is_refused() -> None:
    cfg = DataConfig(name="toy", validation=0.1, batch_size=8)
    with pytest.raises(DataError, match=r"`num_clients=5000` is more than the 3000.*lower"):
        build_federation(
            _dataset(), cfg, num_clients=5000, alpha=0.5, seed=0, device=torch.device("cpu")
        )


def test_every_class_a_client_trains_on_twice_is_held_out_somewhere() -> None:
    """CIFAR-100-LT over 40 clients: per-client rounding alone leaves tail classes with no
    validation image anywhere, and the balanced validation accuracy would silently skip them."""
    counts = longtail_counts(500, 100, 100)
    labels = np.repeat(np.arange(100), counts)
    test_labels = np.repeat(np.arange(100), 10)

    def split(seed: int):
        return client_split(
            labels, test_labels, num_clients=40, alpha=0.5, validation=0.1, seed=seed
        )

    trained, held, _ = split(0)  # without the cover, 12 such classes had none at seed 0
    held_classes = set(labels[np.concatenate(held)].tolist())
    lendable = {c for part in trained for c, n in enumerate(np.bincount(labels[part])) if n >= 2}
    assert lendable <= held_classes
    everything = np.concatenate([*trained, *held])
    assert len(everything) == len(labels) == len(np.unique(everything))  # disjoint, complete
    again = split(0)
    assert all(np.array_equal(a, b) for a, b in zip(held, again[1], strict=True))


def test_a_class_of_single_images_on_separate_clients_stays_in_training() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    trained, held = [np.array([0, 1, 2]), np.array([3, 4, 5])], [np.zeros(0, int), np.zeros(0, int)]
    held[1] = np.array([5])  # class 2 is held out; class 0 (twice on client 0) is not
    trained[1] = np.array([3, 4])
    new_trained, new_held = cover_every_class(labels, trained, held, seed=0)
    assert labels[new_held[0]].tolist() == [0] and len(new_trained[0]) == 2
    assert 1 not in labels[np.concatenate(new_held)]  # one image on each of two clients
