"""The federation's data: long-tailed training set split over clients, balanced and local test sets.

Every client's training images are held once, on the device, as uint8 tensors; a round's
batches come from a BatchLoader over them seeded by (seed, client, round). Every client holds
out `data.validation` of its own images (stratified by class, from (seed, "validation",
client)) and never trains on them: the settings of a run are chosen on these. Local test
sets are index lists into the one balanced test set (clients may share test images) and
follow the client's training class mix, as in FedLoGe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustvision.config import DataConfig
from trustvision.data.augment import BatchAugment
from trustvision.data.dataset import Dataset
from trustvision.data.loader import BatchLoader, select_train_indices, to_tensor
from trustvision.data.partition import (
    class_counts,
    client_test_indices,
    cover_every_class,
    dirichlet_partition,
    validation_split,
)
from trustvision.errors import DataError
from trustvision.seeds import derive_seed


@dataclass(frozen=True, eq=False)
class LoaderSpec:
    """How batches are made: sizes, normalisation, training augmentation, device."""

    batch_size: int
    eval_batch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: BatchAugment
    device: torch.device

    def train(self, images: Tensor, labels: Tensor, *, seed: int) -> BatchLoader:
        """Shuffled, augmented batches; the last batch may be short (FedLoGe keeps it)."""
        return BatchLoader(
            images,
            labels,
            batch_size=self.batch_size,
            mean=self.mean,
            std=self.std,
            shuffle=True,
            augment=self.augment,
            seed=seed,
            device=self.device,
        )

    def test(self, images: Tensor, labels: Tensor) -> BatchLoader:
        """Batches in order, no augmentation."""
        return BatchLoader(
            images,
            labels,
            batch_size=self.eval_batch_size,
            mean=self.mean,
            std=self.std,
            device=self.device,
        )


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's training and validation images (on the device), its training class counts
    and its local test indices."""

    client_id: int
    train_images: Tensor
    train_labels: Tensor
    class_counts: np.ndarray  # (C,) int64, of the training images (the hold-out excluded)
    test_indices: np.ndarray  # into the federation's balanced test set
    val_images: Tensor  # the client's hold-out, never trained on (may be empty)
    val_labels: Tensor

    @property
    def num_samples(self) -> int:
        """Training images this client holds."""
        return len(self.train_labels)

    @property
    def num_val(self) -> int:
        """Validation images this client holds out."""
        return len(self.val_labels)

    def train_loader(self, spec: LoaderSpec, *, seed: int) -> BatchLoader:
        """A BatchLoader over this client's images (no copy: they already sit on the device)."""
        return spec.train(self.train_images, self.train_labels, seed=seed)

    def val_loader(self, spec: LoaderSpec) -> BatchLoader:
        """This client's validation images, in order, unaugmented."""
        return spec.test(self.val_images, self.val_labels)


@dataclass(frozen=True, eq=False)
class Federation:
    """All clients, the balanced test set and the global training class counts."""

    clients: list[ClientData]
    test_images: Tensor
    test_labels: Tensor
    train_counts: np.ndarray  # (C,) int64, the whole long-tailed training set
    classes: tuple[str, ...]
    spec: LoaderSpec

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def test_loader(self) -> BatchLoader:
        """The balanced test set (generic accuracy)."""
        return self.spec.test(self.test_images, self.test_labels)

    def client_test_loader(self, client: ClientData) -> BatchLoader:
        """A client's local test set, gathered from the balanced one."""
        index = torch.as_tensor(client.test_indices, device=self.test_labels.device)
        return self.spec.test(self.test_images[index], self.test_labels[index])

    def describe(self) -> dict[str, Any]:
        """Sizes for the run summary."""
        held_out = torch.cat([c.val_labels for c in self.clients]).cpu().numpy()
        return {
            "train_images": int(self.train_counts.sum()),
            "train_counts": [int(n) for n in self.train_counts],
            "test_images": len(self.test_labels),
            "client_train_images": [c.num_samples for c in self.clients],
            "client_test_images": [len(c.test_indices) for c in self.clients],
            "client_val_images": [c.num_val for c in self.clients],
            "val_counts": np.bincount(held_out, minlength=self.num_classes).tolist(),
            "client_classes": [int((c.class_counts > 0).sum()) for c in self.clients],
        }


def build_federation(
    dataset: Dataset,
    cfg: DataConfig,
    *,
    num_clients: int,
    alpha: float,
    seed: int,
    device: torch.device,
) -> Federation:
    """Long-tail the training set, split it with per-class Dirichlet draws, hold out each
    client's validation images, build local test sets from what the clients train on."""
    train_idx = select_train_indices(
        dataset.train.labels,
        imbalance_factor=cfg.imbalance_factor,
        subset=cfg.train_subset,
        seed=seed,
    )
    train_labels = np.array(dataset.train.labels[train_idx], dtype=np.int64)
    test_end = cfg.test_subset or len(dataset.test.labels)
    test_labels = np.array(dataset.test.labels[:test_end], dtype=np.int64)
    trained, held_out, local_tests = client_split(
        train_labels,
        test_labels,
        num_clients=num_clients,
        alpha=alpha,
        validation=cfg.validation,
        seed=seed,
    )
    images = dataset.train.images  # gathered client by client: no second copy of them all
    labels = torch.from_numpy(train_labels)
    clients = [
        ClientData(
            client_id=k,
            train_images=to_tensor(images, train_idx[part]).to(device),
            train_labels=labels[part].to(device),
            class_counts=class_counts(train_labels[part], dataset.num_classes),
            test_indices=test_idx,
            val_images=to_tensor(images, train_idx[held]).to(device),
            val_labels=labels[held].to(device),
        )
        for k, (part, held, test_idx) in enumerate(zip(trained, held_out, local_tests, strict=True))
    ]
    return Federation(
        clients=clients,
        test_images=to_tensor(dataset.test.images[:test_end]).to(device),
        test_labels=torch.from_numpy(test_labels).to(device),
        train_counts=class_counts(
            train_labels[np.concatenate([np.zeros(0, np.int64), *trained])], dataset.num_classes
        ),
        classes=tuple(dataset.classes),
        spec=loader_spec(dataset, cfg, device=device),
    )


def client_split(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_clients: int,
    alpha: float,
    validation: float,
    seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Positions into the training labels each client trains on and holds out, and each
    client's local test indices (into the balanced test labels)."""
    parts = dirichlet_partition(
        train_labels, num_clients=num_clients, alpha=alpha, seed=derive_seed(seed, "partition")
    )
    if num_clients > len(train_labels):
        empty = sum(len(part) == 0 for part in parts)
        raise DataError(
            f"`num_clients={num_clients}` is more than the {len(train_labels)} training images: "
            f"{empty} clients would get none and the rest one or two (a client without images is "
            "allowed, as in the authors' code, but not most of them); lower `num_clients`"
        )
    splits = [
        client_validation(train_labels[part], validation, seed=seed, client=k)
        for k, part in enumerate(parts)
    ]
    trained = [part[kept] for part, (kept, _) in zip(parts, splits, strict=True)]
    held_out = [part[held] for part, (_, held) in zip(parts, splits, strict=True)]
    trained, held_out = cover_every_class(train_labels, trained, held_out, seed=seed)
    local_tests = client_test_indices(
        [train_labels[p] for p in trained],
        test_labels,
        num_train=sum(len(p) for p in trained),
        seed=derive_seed(seed, "local-test"),
    )
    return trained, held_out, local_tests


def loader_spec(dataset: Dataset, cfg: DataConfig, *, device: torch.device) -> LoaderSpec:
    """The federation's batches: the config's sizes and augmentation, the data set's statistics."""
    augment = BatchAugment(cfg.augment)
    augment.check_fits(*dataset.train.images.shape[-2:])
    return LoaderSpec(
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        mean=dataset.mean,
        std=dataset.std,
        augment=augment,
        device=device,
    )


def client_validation(
    labels: np.ndarray, fraction: float, *, seed: int, client: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(kept, held)` positions into one client's labels: its stratified validation hold-out."""
    return validation_split(labels, fraction=fraction, seed=derive_seed(seed, "validation", client))
