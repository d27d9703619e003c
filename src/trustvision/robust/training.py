"""`trustvision robust train`: a standard or adversarially trained base model in a run directory.

The shape follows `train/centralized.py`: a typed config in, the core's `fit` with an
adversarial objective, a run directory out. The model is trained in pixel space
(`Normalized`), so the saved weights carry their normalisation and attacks need no wrapper.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from trustvision.config import DataConfig, load_config
from trustvision.data.dataset import Dataset, load_data
from trustvision.data.loader import build_loaders
from trustvision.errors import ConfigError
from trustvision.report.plots import plot_run
from trustvision.robust.adversarial import Ramp, make_objective
from trustvision.robust.config import RobustTrainConfig
from trustvision.robust.pixels import build_pixel_model
from trustvision.robust.runs import WEIGHTS, open_run
from trustvision.runs import RunDir, environment_info
from trustvision.seeds import derive_seed
from trustvision.train import checkpoint as ckpt
from trustvision.train.loop import Accel, Reporter, fit, select_device
from trustvision.train.optim import build_optimizer, build_scheduler, parameter_groups


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads when asked (on a shared machine 1 thread can be 10x faster)."""
    if threads is not None:
        torch.set_num_threads(threads)


def split_record(data: DataConfig, *, seed: int, validation_images: int) -> dict[str, Any]:
    """The settings that fix which training images a run held out (`split_train_indices`)."""
    return {
        "validation": data.validation,
        "validation_images": validation_images,
        "seed": seed,
        "train_subset": data.train_subset,
        "imbalance_factor": data.imbalance_factor,
    }


def data_record(
    dataset: Dataset,
    *,
    train_images: int,
    from_path: str | None = None,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a run records about its data: enough to rebuild the model, to cite the data and
    (with `split`, see `split_record`) to recompute which training images it held out."""
    return {
        "name": dataset.name,
        "from_path": from_path,
        "source": dataset.source,
        "variant": dataset.variant,
        "num_classes": dataset.num_classes,
        "image_shape": list(dataset.image_shape),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "train_images": train_images,
        **(split or {}),
    }


def train_robust(
    cfg: RobustTrainConfig,
    *,
    run_path: str | Path | None = None,
    reporter: Reporter | None = None,
) -> RunDir:
    """Train `cfg.model` with `cfg.attack`; a given `run_path` that exists is resumed."""
    apply_threads(cfg.threads)
    device = select_device(cfg.device)
    accel = Accel(device, amp=cfg.amp, channels_last=cfg.channels_last)
    dataset = load_data(cfg.data)
    loaders = build_loaders(dataset, cfg.data, seed=cfg.seed, device=device, normalize=False)
    train_loader, test_loader, counts = loaders.train, loaders.test, loaders.train_counts
    if len(train_loader) == 0:
        raise ConfigError(
            f"`data.batch_size={cfg.data.batch_size}` is larger than the "
            f"{train_loader.num_samples} training images: lower it or use more data"
        )
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_pixel_model(
        cfg.model,
        num_classes=dataset.num_classes,
        image_shape=dataset.image_shape,
        mean=dataset.mean,
        std=dataset.std,
    )
    model = accel.prepare_model(model)
    optimizer = build_optimizer(cfg.optim, parameter_groups([model.net]))
    total = cfg.epochs * len(train_loader)
    scheduler = build_scheduler(
        optimizer, cfg.optim, total_steps=total, steps_per_epoch=len(train_loader)
    )
    ramp = Ramp(epochs=cfg.attack.ramp_epochs, steps_per_epoch=len(train_loader))
    run, resume = open_run(run_path, root=cfg.runs_dir, name=cfg.name, config=cfg)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result = fit(
        model,
        train_loader=train_loader,
        test_loader=test_loader,
        val_loader=loaders.val,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=make_objective(cfg.attack, ramp=ramp),
        epochs=cfg.epochs,
        seed=cfg.seed,
        accel=accel,
        num_classes=dataset.num_classes,
        run=run,
        grad_clip=cfg.optim.grad_clip,
        checkpoint_every=cfg.checkpoint_every,
        resume=resume,
        reporter=reporter,
        before_epoch=ramp.start_epoch,
    )
    ckpt.save_weights(run.path / WEIGHTS, model.state_dict(), {"model": cfg.model.name})
    summary: dict[str, Any] = {
        "status": "finished",
        "kind": "base",
        "seed": cfg.seed,
        "started": started,
        "wall_seconds": result.wall_seconds,
        "epochs": cfg.epochs,
        "model": cfg.model.name,
        "parameters": model.num_parameters(),
        "attack": cfg.attack.model_dump(mode="json"),
        "data": data_record(
            dataset,
            train_images=train_loader.num_samples,
            from_path=cfg.data.source,
            split=split_record(
                cfg.data,
                seed=cfg.seed,
                validation_images=0 if loaders.val is None else loaders.val.num_samples,
            ),
        ),
        "train_class_counts": counts.tolist(),
        "validation": result.validation,
        "test": result.final,
        "environment": environment_info(device),
    }
    run.write_summary(summary)
    plot_run(run, class_names=dataset.classes)
    return run


def resume_robust(run_dir: str | Path, *, reporter: Reporter | None = None) -> RunDir:
    """Continue a killed `robust train` run with the config it was started with."""
    run = RunDir.open(run_dir)
    cfg = load_config(RobustTrainConfig, run.config_path)
    return train_robust(cfg, run_path=run.path, reporter=reporter)
