"""`trustvision train`: one model, one data set, from a typed config to a finished run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from trustvision.config import TrainConfig, load_config
from trustvision.data.dataset import load_data
from trustvision.data.loader import build_loaders
from trustvision.errors import ConfigError
from trustvision.models import create_model
from trustvision.report.plots import plot_run
from trustvision.runs import RunDir, environment_info
from trustvision.seeds import derive_seed
from trustvision.train import checkpoint as ckpt
from trustvision.train.loop import Accel, Reporter, cross_entropy, fit, select_device
from trustvision.train.optim import build_optimizer, build_scheduler, parameter_groups


def train_model(
    cfg: TrainConfig, *, resume_dir: str | Path | None = None, reporter: Reporter | None = None
) -> RunDir:
    """Train `cfg.model` on `cfg.data`; with `resume_dir`, continue that run from its last checkpoint."""
    device = select_device(cfg.device)
    accel = Accel(device, amp=cfg.amp, channels_last=cfg.channels_last)
    dataset = load_data(cfg.data)
    loaders = build_loaders(dataset, cfg.data, seed=cfg.seed, device=device)
    train_loader, train_counts = loaders.train, loaders.train_counts
    if len(train_loader) == 0:
        raise ConfigError(
            f"`data.batch_size={cfg.data.batch_size}` is larger than the {train_loader.num_samples} "
            "training images: lower it or use more data"
        )
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = create_model(
        cfg.model.name,
        num_classes=dataset.num_classes,
        in_channels=dataset.image_shape[0],
        **cfg.model.kwargs,
    )
    model = accel.prepare_model(model)
    optimizer = build_optimizer(cfg.optim, parameter_groups([model]))
    scheduler = build_scheduler(
        optimizer,
        cfg.optim,
        total_steps=cfg.epochs * len(train_loader),
        steps_per_epoch=len(train_loader),
    )
    run = (
        RunDir.open(resume_dir)
        if resume_dir
        else RunDir.create(root=cfg.runs_dir, name=cfg.name, config=cfg)
    )
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result = fit(
        model,
        train_loader=train_loader,
        test_loader=loaders.test,
        val_loader=loaders.val,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=cross_entropy(label_smoothing=cfg.optim.label_smoothing),
        epochs=cfg.epochs,
        seed=cfg.seed,
        accel=accel,
        num_classes=dataset.num_classes,
        run=run,
        train_counts=train_counts,
        grad_clip=cfg.optim.grad_clip,
        checkpoint_every=cfg.checkpoint_every,
        resume=resume_dir is not None,
        reporter=reporter,
    )
    ckpt.save_weights(run.path / "model.safetensors", model.state_dict(), {"model": cfg.model.name})
    summary: dict[str, Any] = {
        "status": "finished",
        "seed": cfg.seed,
        "started": started,
        "wall_seconds": result.wall_seconds,
        "epochs": cfg.epochs,
        "model": cfg.model.name,
        "parameters": model.num_parameters(),
        "data": {
            "name": dataset.name,
            "source": dataset.source,
            "train_images": train_loader.num_samples,
            "train_class_counts": train_counts.tolist(),
            "validation_images": loaders.val.num_samples if loaders.val else 0,
        },
        "validation": result.validation,
        "test": result.final,
        "environment": environment_info(device),
    }
    run.write_summary(summary)
    plot_run(run, class_names=dataset.classes)
    return run


def resume_training(run_dir: str | Path, *, reporter: Reporter | None = None) -> RunDir:
    """Continue a killed run with the config it was started with."""
    run = RunDir.open(run_dir)
    cfg = load_config(TrainConfig, run.config_path)
    return train_model(cfg, resume_dir=run.path, reporter=reporter)
