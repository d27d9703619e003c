"""`data.validation`: held-out training images replace the test split, the same for every run."""

from __future__ import annotations

import numpy as np
import pytest

from trustvision.config import DataConfig
from trustvision.data.dataset import ArraySplit, Dataset, hold_out, load_data
from trustvision.errors import ConfigError


def _dataset(n: int = 200) -> Dataset:
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)  # each image is its own index
    labels = np.arange(n, dtype=np.int64) % 10
    test = ArraySplit(np.full((7, 1, 1, 1), 255, np.uint8), np.zeros(7, np.int64))
    return Dataset(
        name="toy",
        classes=tuple(str(c) for c in range(10)),
        train=ArraySplit(images, labels),
        test=test,
        mean=(0.5,),
        std=(0.2,),
        source="test",
    )


def test_held_out_images_are_disjoint_from_training_and_cover_it() -> None:
    split = hold_out(_dataset(), 50)
    held = set(split.test.images.ravel().tolist())
    kept = set(split.train.images.ravel().tolist())
    assert len(split.test) == 50 and len(split.train) == 150
    assert not held & kept and held | kept == set(range(200))
    assert 255 not in held  # the real test split is not used
    # labels travel with their images
    assert (split.test.labels == split.test.images.ravel() % 10).all()
    assert "validation" in split.variant and split.mean == (0.5,)


def test_every_call_holds_out_the_same_images() -> None:
    first, second = hold_out(_dataset(), 30), hold_out(_dataset(), 30)
    assert np.array_equal(first.test.images, second.test.images)


@pytest.mark.parametrize("count", [200, 500])
def test_holding_out_everything_is_a_config_error(count: int) -> None:
    with pytest.raises(ConfigError, match=r"data\.validation"):
        hold_out(_dataset(), count)


def test_load_data_applies_validation(monkeypatch) -> None:
    from trustvision.data import dataset as dataset_module

    monkeypatch.setattr(dataset_module, "load_dataset", lambda name, from_path=None: _dataset())
    assert len(load_data(DataConfig(name="toy")).test) == 7
    assert len(load_data(DataConfig(name="toy", validation=20)).test) == 20
