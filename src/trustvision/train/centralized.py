"""`trustvision train`: one model, one data set, from a typed config to a finished run directory."""

from __future__ import annotations

from pathlib import Path

import torch

from trustvision.config import TrainConfig, load_config
from trustvision.models import create_model_for
from trustvision.report.plots import plot_run
from trustvision.runs import RunDir
from trustvision.seeds import derive_seed
from trustvision.train.loop import Accel, Reporter, cross_entropy
from trustvision.train.recipe import (
    batches_of,
    load_with_loaders,
    run_settings,
    train_config_run,
)

RESUME = "trustvision train --resume"


def train_model(
    cfg: TrainConfig,
    *,
    resume_dir: str | Path | None = None,
    checkpoint: str | None = None,
    reporter: Reporter | None = None,
) -> RunDir:
    """Train `cfg.model` on `cfg.data`; with `resume_dir`, continue that run from its newest
    good checkpoint (or the one named `checkpoint`)."""
    with run_settings(cfg, data_parallel=True) as device:
        accel = Accel(device, amp=cfg.amp, channels_last=cfg.channels_last)
        dataset, loaders = load_with_loaders(cfg.data, seed=cfg.seed, device=device)
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        model = create_model_for(
            cfg.model.name,
            num_classes=dataset.num_classes,
            image_shape=dataset.image_shape,
            **cfg.model.kwargs,
        )
        model = accel.prepare_model(model)
        run, summary = train_config_run(
            cfg,
            model,
            run_path=resume_dir,
            resume_hint=RESUME,
            batches=batches_of(loaders),
            objective=cross_entropy(label_smoothing=cfg.optim.label_smoothing),
            accel=accel,
            num_classes=dataset.num_classes,
            reporter=reporter,
            checkpoint=checkpoint,
        )
        summary |= {
            "data": {
                "name": dataset.name,
                "source": dataset.source,
                "train_images": loaders.train.num_samples,
                "train_class_counts": loaders.train_counts.tolist(),
                "validation_images": loaders.val.num_samples if loaders.val else 0,
            },
        }
        plot_run(run, class_names=dataset.classes, summary=summary)
        run.write_summary(summary)
    return run


def resume_training(run_dir: str | Path, *, reporter: Reporter | None = None) -> RunDir:
    """Continue a killed run with the config it was started with."""
    run = RunDir.open(run_dir)
    cfg = load_config(TrainConfig, run.config_path)
    return train_model(cfg, resume_dir=run.path, reporter=reporter)
