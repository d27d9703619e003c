"""BatchLoader: chunked batches hold exactly the images and labels of per-batch gathering."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from trustvision.config import AugmentConfig
from trustvision.data import loader as loader_module
from trustvision.data.augment import BatchAugment
from trustvision.data.loader import BatchLoader, to_tensor
from trustvision.errors import ConfigError


def _loader(n: int, **kw) -> BatchLoader:
    images = torch.randint(
        0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    labels = torch.arange(n) % 10
    return BatchLoader(images, labels, mean=(0.3,), std=(0.2,), seed=5, **kw)


def _reference(loader: BatchLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One gather per batch, as the loader's contract reads."""
    order = loader.order(epoch)
    batches = []
    for start in range(0, len(loader) * loader.batch_size, loader.batch_size):
        index = order[start : start + loader.batch_size]
        batches.append((loader.make_batch(index), loader.labels[index]))
    return batches


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("chunk", [8, 24, 4096])  # one batch, several batches, the whole epoch
def test_chunked_batches_equal_per_batch_gathering(
    monkeypatch, drop_last: bool, chunk: int
) -> None:
    monkeypatch.setattr(loader_module, "CHUNK_IMAGES", chunk)
    loader = _loader(101, batch_size=8, shuffle=True, drop_last=drop_last)

    got = list(loader.epoch(3))
    expected = _reference(loader, 3)

    assert len(got) == len(loader) == len(expected)
    assert [len(y) for _, y in got] == [len(y) for _, y in expected]
    for (x, y), (x_ref, y_ref) in zip(got, expected, strict=True):
        assert torch.equal(x, x_ref)
        assert torch.equal(y, y_ref)
    seen = torch.cat([y for _, y in got])
    assert len(seen) == (96 if drop_last else 101)


def test_augmented_batches_draw_per_batch_and_repeat_per_epoch() -> None:
    augment = BatchAugment(AugmentConfig(hflip=True, brightness=0.2))
    loader = _loader(40, batch_size=8, shuffle=True, augment=augment)

    first, again, other = list(loader.epoch(1)), list(loader.epoch(1)), list(loader.epoch(2))

    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(first, other, strict=True))
    plain = _reference(_loader(40, batch_size=8, shuffle=True), 1)
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(first, plain, strict=True))


def test_to_tensor_gathers_rows_of_a_memory_map_into_a_tensor_of_its_own(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(24, dtype=np.uint8).reshape(6, 4))
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    rows = np.array([4, 0, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a read-only array
        gathered = to_tensor(mapped, rows)
        whole = to_tensor(mapped)
    assert gathered.tolist() == mapped[rows].tolist() and gathered.is_contiguous()
    assert whole.tolist() == mapped.tolist()
    for tensor in (gathered, whole):  # memory of their own, not the file's map
        assert not np.shares_memory(tensor.numpy(), mapped)


def test_a_crop_padding_wider_than_the_images_is_a_config_error():
    images = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    wide = BatchAugment(AugmentConfig(crop_padding=29))
    with pytest.raises(ConfigError, match=r"crop_padding=29` is wider than the 28x28 images"):
        BatchLoader(images, torch.zeros(4), batch_size=2, mean=(0.5,), std=(0.5,), augment=wide)
    fits = BatchAugment(AugmentConfig(crop_padding=28))
    loader = BatchLoader(
        images, torch.zeros(4), batch_size=2, mean=(0.5,), std=(0.5,), augment=fits
    )
    assert loader.augment is fits
