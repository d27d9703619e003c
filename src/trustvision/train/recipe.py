"""Train a model into a run directory: the one recipe every system calls.

`trustvision train`, the compact stages, the robust bases and the mixing network differ in
their model, their batches and their objective; what they share lives here once: the run
settings (CPU threads for the block, restored after; the device), loading the data with
its loaders, the optimiser and schedule, the core loop (`fit`), the saved weights and the
part of the summary every run has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from trustvision.config import DataConfig, OptimConfig, RunSettings
from trustvision.data.dataset import Dataset, load_data
from trustvision.data.loader import BatchLoader, Loaders, build_loaders
from trustvision.errors import ConfigError
from trustvision.runs import RunDir, environment_info
from trustvision.train import checkpoint as ckpt
from trustvision.train.loop import Accel, FitResult, Objective, Reporter, fit, select_device
from trustvision.train.optim import build_optimizer, build_scheduler, parameter_groups

WEIGHTS = "model.safetensors"


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with `threads` intra-op threads (None: as they are), restoring the count."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def run_settings(settings: RunSettings) -> Iterator[torch.device]:
    """The block's device, with the settings' CPU threads for its duration."""
    device = select_device(settings.device)
    with torch_threads(settings.threads):
        yield device


def require_batches(loader: BatchLoader, data: DataConfig) -> None:
    """A training loader with no full batch is a ConfigError, before anything is trained."""
    if len(loader) == 0:
        raise ConfigError(
            f"`data.batch_size={data.batch_size}` is larger than the {loader.num_samples} "
            "training images: lower it or use more data"
        )


def load_with_loaders(
    data: DataConfig, *, seed: int, device: torch.device, normalize: bool = True
) -> tuple[Dataset, Loaders]:
    """The data set and its loaders (train, validation hold-out, test), checked for batches."""
    dataset = load_data(data)
    loaders = build_loaders(dataset, data, seed=seed, device=device, normalize=normalize)
    require_batches(loaders.train, data)
    return dataset, loaders


@dataclass(frozen=True)
class Batches:
    """The loaders one training reads: `test` is evaluated every epoch (the mixing network
    puts validation images there), `val` too when the run holds some out."""

    train: BatchLoader
    test: BatchLoader
    val: BatchLoader | None = None
    train_counts: np.ndarray | None = None  # per-class training images, for the metrics

    @classmethod
    def of(cls, loaders: Loaders) -> Batches:
        return cls(loaders.train, loaders.test, loaders.val, loaders.train_counts)


def train_into_run(
    model: nn.Module,
    run: RunDir,
    *,
    batches: Batches,
    objective: Objective,
    optim: OptimConfig,
    epochs: int,
    seed: int,
    accel: Accel,
    num_classes: int,
    resume: bool,
    reporter: Reporter | None = None,
    checkpoint_every: int = 1,
    groups: Sequence[nn.Module] | None = None,
    lr_scales: Sequence[float] | None = None,
    before_epoch: Callable[[int], None] | None = None,
    after_epoch: Callable[[int], dict[str, Any]] | None = None,
    weights: str | None = WEIGHTS,
    weights_meta: dict[str, str] | None = None,
) -> FitResult:
    """Train `model` (or only `groups` of it) with the core loop into `run`, resuming its last
    checkpoint when `resume`; the final weights go to `run/<weights>` (None: not saved)."""
    optimizer = build_optimizer(optim, parameter_groups(groups or [model], lr_scales=lr_scales))
    steps = len(batches.train)
    scheduler = build_scheduler(optimizer, optim, total_steps=epochs * steps, steps_per_epoch=steps)
    result = fit(
        model,
        train_loader=batches.train,
        test_loader=batches.test,
        val_loader=batches.val,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=objective,
        epochs=epochs,
        seed=seed,
        accel=accel,
        num_classes=num_classes,
        run=run,
        train_counts=batches.train_counts,
        grad_clip=optim.grad_clip,
        checkpoint_every=checkpoint_every,
        resume=resume,
        reporter=reporter,
        before_epoch=before_epoch,
        after_epoch=after_epoch,
    )
    if weights is not None:
        ckpt.save_weights(run.path / weights, model.state_dict(), weights_meta)
    return result


def started_now() -> str:
    """The local time a run starts, as its summary records it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_summary(
    result: FitResult, *, seed: int, epochs: int, started: str, device: torch.device
) -> dict[str, Any]:
    """The part of summary.json every trained run has; a system adds its own entries."""
    return {
        "status": "finished",
        "seed": seed,
        "started": started,
        "wall_seconds": result.wall_seconds,
        "epochs": epochs,
        "validation": result.validation,
        "test": result.final,
        "environment": environment_info(device),
    }
