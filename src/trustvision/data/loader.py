"""In-memory batches: uint8 tensors on the device, gathered, augmented and normalised per batch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trustvision.config import DataConfig
from trustvision.data.augment import BatchAugment
from trustvision.data.dataset import Dataset
from trustvision.data.longtail import longtail_indices
from trustvision.data.partition import validation_split
from trustvision.seeds import derive_seed


def to_tensor(array: np.ndarray, rows: np.ndarray | None = None) -> Tensor:
    """A torch tensor of its own holding `array` (possibly memory-mapped, read-only), or only
    its `rows`: gathering rows already makes a fresh array, which is not copied again (a
    split of the training images would otherwise be in memory twice while loaders are built)."""
    if rows is None:
        return torch.from_numpy(np.ascontiguousarray(array).copy())
    return torch.from_numpy(np.ascontiguousarray(np.take(array, rows, axis=0)))


CHUNK_IMAGES = 2048  # images gathered at once for unaugmented batches (25 MB at 32x32x3)


class BatchLoader:
    """Batches of (normalised float images, int64 labels) from uint8 tensors held on `device`.

    The whole split lives on the device; a batch is an index gather, a cast, the augmentation
    (on [0, 1] pixels) and normalisation, all as whole-batch tensor ops.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        shuffle: bool = False,
        drop_last: bool = False,
        augment: BatchAugment | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        normalize: bool = True,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size = batch_size
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(shape)
        self.std = torch.tensor(std, device=self.device).view(shape)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment if augment is not None and augment.enabled else None
        if self.augment is not None:
            self.augment.check_fits(*images.shape[-2:])
        self.seed = seed
        self.normalize = normalize  # False: yield [0, 1] pixels (attacks work in pixel space)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def order(self, epoch: int) -> Tensor:
        """The sample order of an epoch: a seeded permutation (drawn on the CPU, so CPU and CUDA agree)."""
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", epoch))
        return torch.randperm(n, generator=generator).to(self.device)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the batches of one epoch.

        Without augmentation, batches are slices of chunks of about `CHUNK_IMAGES` images
        made at once: the same values, but a handful of tensor ops per chunk instead of per
        batch, which matters at the paper's batch size of 8. Augmented batches are made one
        by one, so each draws from the epoch's generator as it always has.
        """
        order = self.order(epoch)[: len(self) * self.batch_size]
        size = self.batch_size
        if self.augment is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(derive_seed(self.seed, "augment", epoch))
            for start in range(0, len(order), size):
                index = order[start : start + size]
                yield self.make_batch(index, generator), self.labels[index]
            return
        step = size * max(1, CHUNK_IMAGES // size)
        for first in range(0, len(order), step):
            index = order[first : first + step]
            images, labels = self.make_batch(index), self.labels[index]
            for start in range(0, len(index), size):
                yield images[start : start + size], labels[start : start + size]

    def make_batch(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Gather, scale to [0, 1], augment (when a generator is given) and normalise.

        Unaugmented, image i of the result must be image `index[i]`: `epoch` slices batches
        out of one call over a whole chunk.
        """
        x = self.images[index].float().div_(255.0)
        if self.augment is not None and generator is not None:
            x = self.augment(x, generator)
        return self.normalized(x)

    def normalized(self, x: Tensor) -> Tensor:
        """[0, 1] pixels normalised, or as they are with `normalize=False`."""
        return (x - self.mean) / self.std if self.normalize else x

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.epoch(0)


def select_train_indices(
    labels: np.ndarray, *, imbalance_factor: float | None, subset: int | None, seed: int
) -> np.ndarray:
    """Indices of the training images a run uses: long-tailed first, then a seeded subset."""
    indices = np.arange(len(labels))
    if imbalance_factor is not None:
        indices = longtail_indices(labels, imbalance_factor)
    if subset is not None and subset < len(indices):
        rng = np.random.default_rng(derive_seed(seed, "subset"))
        indices = np.sort(rng.choice(indices, size=subset, replace=False))
    return indices


def split_train_indices(
    labels: np.ndarray, cfg: DataConfig, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(train, validation)` indices into the training split: the images a run trains on and
    the stratified hold-out (`cfg.validation`) it chooses its settings on, disjoint."""
    selected = select_train_indices(
        labels, imbalance_factor=cfg.imbalance_factor, subset=cfg.train_subset, seed=seed
    )
    kept, held = validation_split(
        np.asarray(labels[selected]),
        fraction=cfg.validation,
        seed=derive_seed(seed, "validation"),
    )
    return selected[kept], selected[held]


@dataclass(frozen=True, eq=False)
class Loaders:
    """A centralised run's batches: training, validation (None without a hold-out) and test."""

    train: BatchLoader
    val: BatchLoader | None
    test: BatchLoader
    train_counts: np.ndarray  # (C,) int64 training images per class, the hold-out excluded


def build_loaders(
    dataset: Dataset,
    cfg: DataConfig,
    *,
    seed: int,
    device: torch.device,
    normalize: bool = True,
) -> Loaders:
    """Training, validation and test loaders for `cfg`, and the training class counts.

    With `normalize=False` every loader yields [0, 1] pixels (robust training attacks pixels).
    """
    train_idx, val_idx = split_train_indices(dataset.train.labels, cfg, seed=seed)
    train_labels = np.asarray(dataset.train.labels[train_idx])
    test_end = cfg.test_subset or len(dataset.test.labels)

    def ordered(images: Tensor, labels: Tensor) -> BatchLoader:
        return BatchLoader(
            images,
            labels,
            batch_size=cfg.eval_batch_size,
            mean=dataset.mean,
            std=dataset.std,
            device=device,
            normalize=normalize,
        )

    train = BatchLoader(
        to_tensor(dataset.train.images, train_idx),
        to_tensor(train_labels),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        augment=BatchAugment(cfg.augment),
        seed=seed,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
        normalize=normalize,
    )
    val = None
    if len(val_idx):
        val = ordered(
            to_tensor(dataset.train.images, val_idx), to_tensor(dataset.train.labels, val_idx)
        )
    test = ordered(
        to_tensor(dataset.test.images[:test_end]), to_tensor(dataset.test.labels[:test_end])
    )
    counts = np.bincount(train_labels, minlength=dataset.num_classes).astype(np.int64)
    return Loaders(train=train, val=val, test=test, train_counts=counts)
