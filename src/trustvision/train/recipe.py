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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trustvision import distributed
from trustvision.config import DataConfig, OptimConfig, RunSettings, TrainConfig
from trustvision.data.dataset import Dataset, load_data
from trustvision.data.loader import BatchLoader, Loaders, build_loaders
from trustvision.errors import ConfigError
from trustvision.models import ImageClassifier
from trustvision.runs import RunDir, environment_info
from trustvision.train import checkpoint as ckpt
from trustvision.train.loop import (
    Accel,
    Batches,
    FitResult,
    Objective,
    Reporter,
    fit,
    select_device,
)
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


DATA_PARALLEL = "`trustvision train`, `robust train` and `compact train`/`run`"


def one_process_only() -> None:
    """Refuse to start under torchrun: every process would repeat the whole command."""
    if distributed.launched():
        raise ConfigError(
            "this command runs in one process: launch it without torchrun (under torchrun, "
            f"{DATA_PARALLEL} train data-parallel; the federated system scales out through "
            "Flower's SuperNodes instead)"
        )


@contextmanager
def run_settings(settings: RunSettings, *, data_parallel: bool = False) -> Iterator[torch.device]:
    """The block's device, with the settings' CPU threads for its duration. Under torchrun a
    `data_parallel` block joins the process group and gets this process's device
    (distributed.py); any other block is refused there (`one_process_only`)."""
    if not data_parallel:
        one_process_only()
    device = select_device(settings.device)
    if data_parallel:
        device = distributed.start(device)
    with torch_threads(settings.threads):
        yield device


def require_batches(loader: BatchLoader, data: DataConfig) -> None:
    """A training loader with no full batch, or a batch the data-parallel processes cannot
    share equally, is a ConfigError, before a run directory is made."""
    if len(loader) == 0:
        raise ConfigError(
            f"`data.batch_size={data.batch_size}` is larger than the {loader.num_samples} "
            "training images: lower it or use more data"
        )
    world = distributed.world_size()
    if data.batch_size % world:
        raise ConfigError(
            f"`data.batch_size={data.batch_size}` cannot be shared equally by {world} "
            f"processes: make it a multiple of {world}"
        )


def load_with_loaders(
    data: DataConfig, *, seed: int, device: torch.device, normalize: bool = True
) -> tuple[Dataset, Loaders]:
    """The data set and its loaders (train, validation hold-out, test), checked for batches."""
    dataset = load_data(data)
    loaders = build_loaders(dataset, data, seed=seed, device=device, normalize=normalize)
    require_batches(loaders.train, data)
    return dataset, loaders


def batches_of(loaders: Loaders) -> Batches:
    """A centralised run's loaders as the core loop reads them."""
    return Batches(loaders.train, loaders.test, loaders.val, loaders.train_counts)


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
    checkpoint: str | None = None,
) -> FitResult:
    """Train `model` (or only `groups` of it) with the core loop into `run`, resuming its last
    checkpoint when `resume` (or `checkpoint`, by name); the final weights go to
    `run/<weights>` (None: not saved)."""
    optimizer = build_optimizer(optim, parameter_groups(groups or [model], lr_scales=lr_scales))
    steps = len(batches.train)
    scheduler = build_scheduler(optimizer, optim, total_steps=epochs * steps, steps_per_epoch=steps)
    result = fit(
        model,
        batches=batches,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=objective,
        epochs=epochs,
        seed=seed,
        accel=accel,
        num_classes=num_classes,
        run=run,
        grad_clip=optim.grad_clip,
        checkpoint_every=checkpoint_every,
        resume=resume,
        reporter=reporter,
        before_epoch=before_epoch,
        after_epoch=after_epoch,
        checkpoint=checkpoint,
    )
    if weights is not None:
        ckpt.save_weights(run.path / weights, model.state_dict(), weights_meta)
    return result


def train_config_run(
    cfg: TrainConfig,
    model: ImageClassifier | Any,
    *,
    run_path: str | Path | None,
    resume_hint: str,
    batches: Batches,
    objective: Objective,
    accel: Accel,
    num_classes: int,
    reporter: Reporter | None,
    **options: Any,
) -> tuple[RunDir, dict[str, Any]]:
    """The model of a `TrainConfig` (or a config built on it) trained into its run directory:
    a fresh one, or `run_path` (created, or continued if it holds this config). Returns the run
    and the summary every such run has; `options` go to `train_into_run` (groups, hooks)."""
    run, existed = RunDir.open_or_create(
        run_path, root=cfg.runs_dir, name=cfg.name, config=cfg, resume_hint=resume_hint
    )
    started = started_now()
    result = train_into_run(
        model,
        run,
        batches=batches,
        objective=objective,
        optim=cfg.optim,
        epochs=cfg.epochs,
        seed=cfg.seed,
        accel=accel,
        num_classes=num_classes,
        resume=existed,
        reporter=reporter,
        checkpoint_every=cfg.checkpoint_every,
        weights_meta={"model": cfg.model.name},
        **options,
    )
    summary = run_summary(
        result, seed=cfg.seed, epochs=cfg.epochs, started=started, device=accel.device
    )
    return run, summary | {"model": cfg.model.name, "parameters": model.num_parameters()}


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
