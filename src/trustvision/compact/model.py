"""The deployed architecture of a compact run: built from the config and the run's seed, held
to the parameter budget, its MACs counted, its weights saved and loaded with what rebuilds it."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from trustvision.compact.config import CompactConfig
from trustvision.config import load_config
from trustvision.errors import ConfigError
from trustvision.models import ImageClassifier, create_model_for
from trustvision.runs import RunDir
from trustvision.seeds import derive_seed
from trustvision.train import checkpoint as ckpt
from trustvision.train.recipe import WEIGHTS

RESUME = "trustvision compact train --resume"


def build_model(
    cfg: CompactConfig, *, num_classes: int, image_shape: tuple[int, ...]
) -> ImageClassifier:
    """The deployed architecture for images of `image_shape`, initialised from the run's seed."""
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    return create_model_for(
        cfg.model.name, num_classes=num_classes, image_shape=image_shape, **cfg.model.kwargs
    )


def check_budget(model: ImageClassifier, *, budget: int, name: str) -> int:
    """The model's parameter count; over `budget` it is a ConfigError, before any training."""
    count = model.num_parameters()
    if count > budget:
        raise ConfigError(
            f"model `{name}` has {count:,} parameters, over the budget of {budget:,} "
            "(`budget`): choose a smaller model or raise `budget`"
        )
    return count


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one image of `input_shape` (C, H, W)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    return counter.get_total_flops() // 2


def write_deployed(run: RunDir, *, model: ImageClassifier, cfg: CompactConfig, row: str) -> None:
    """The deployed model's weights, with what is needed to rebuild it in the metadata."""
    meta = {"model": cfg.model.name, "kwargs": json.dumps(cfg.model.kwargs), "row": row}
    ckpt.save_weights(run.path / WEIGHTS, model.state_dict(), meta)


def load_deployed(run: RunDir) -> tuple[CompactConfig, ImageClassifier, dict[str, Any]]:
    """The config, the deployed model (eval mode) and the summary of a finished run."""
    if not run.finished:
        raise ConfigError(
            f"`{run.path}` has no finished compact run: finish it with "
            f"`trustvision compact train --resume {run.path}`"
        )
    summary = run.read_summary()
    cfg = load_config(CompactConfig, run.config_path)
    model = build_model(
        cfg, num_classes=summary["num_classes"], image_shape=tuple(summary["input_shape"])
    )
    model.load_state_dict(ckpt.load_weights(run.path / WEIGHTS))
    return cfg, model.eval(), summary
