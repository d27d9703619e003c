"""`trustvision robust train`: a standard or adversarially trained base model in a run directory.

The shape follows `train/centralized.py`: a typed config in, the core's `fit` with an
adversarial objective, a run directory out. The model is trained in pixel space
(`Normalized`), so the saved weights carry their normalisation and attacks need no wrapper.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from trustvision.config import DataConfig
from trustvision.data.dataset import Dataset
from trustvision.data.loader import Loaders
from trustvision.report.plots import plot_run
from trustvision.robust.adversarial import Ramp, make_objective
from trustvision.robust.config import RobustTrainConfig
from trustvision.robust.pixels import Normalized, build_pixel_model
from trustvision.runs import RunDir
from trustvision.seeds import derive_seed
from trustvision.train.loop import Accel, Reporter
from trustvision.train.recipe import (
    batches_of,
    load_with_loaders,
    run_settings,
    train_config_run,
)

RESUME = "trustvision robust train --resume"


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


def base_record(
    cfg: RobustTrainConfig, model: Normalized, dataset: Dataset, loaders: Loaders
) -> dict[str, Any]:
    """What a base's summary adds to every run's: its kind, model, attack and data record."""
    val_images = 0 if loaders.val is None else loaders.val.num_samples
    return {
        "kind": "base",
        "attack": cfg.attack.model_dump(mode="json"),
        "data": data_record(
            dataset,
            train_images=loaders.train.num_samples,
            from_path=cfg.data.source,
            split=split_record(cfg.data, seed=cfg.seed, validation_images=val_images),
        ),
        "train_class_counts": loaders.train_counts.tolist(),
    }


def train_robust(
    cfg: RobustTrainConfig,
    *,
    run_path: str | Path | None = None,
    checkpoint: str | None = None,
    reporter: Reporter | None = None,
) -> RunDir:
    """Train `cfg.model` with `cfg.attack`; a given `run_path` that exists is resumed (from
    its newest good checkpoint, or the one named `checkpoint`)."""
    with run_settings(cfg, data_parallel=True) as device:
        accel = Accel(device, amp=cfg.amp, channels_last=cfg.channels_last)
        dataset, loaders = load_with_loaders(
            cfg.data, seed=cfg.seed, device=device, normalize=False
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
        ramp = Ramp(epochs=cfg.attack.ramp_epochs, steps_per_epoch=len(loaders.train))
        run, summary = train_config_run(
            cfg,
            model,
            run_path=run_path,
            resume_hint=RESUME,
            batches=replace(batches_of(loaders), train_counts=None),
            objective=make_objective(cfg.attack, ramp=ramp),
            accel=accel,
            num_classes=dataset.num_classes,
            reporter=reporter,
            groups=[model.net],
            before_epoch=ramp.start_epoch,
            checkpoint=checkpoint,
        )
        summary |= base_record(cfg, model, dataset, loaders)
        plot_run(run, class_names=dataset.classes, summary=summary)
        run.write_summary(summary)
    return run
