"""`trustvision robust import`: a RobustBench model-zoo checkpoint as a base run directory.

The zoo's weights (robust/zoo.py) go into our `wrn` with identity normalisation (zoo models
take [0, 1] pixels), saved as safetensors in a run directory like `robust train`'s, so that
`robust mix`, `eval` and `certify` take it as a base. Its data record copies the validation
hold-out of another base (`like`), so that a mix can choose its knobs on those images; the
summary says plainly that the imported model was trained by its authors on their data, which
may include those images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trustvision.config import DataConfig, ModelConfig
from trustvision.data.dataset import load_dataset
from trustvision.errors import ConfigError
from trustvision.robust.commands.train import data_record, split_record
from trustvision.robust.config import RobustTrainConfig
from trustvision.robust.pixels import build_pixel_model
from trustvision.robust.runs import read_finished
from trustvision.robust.zoo import describe_zoo, map_wrn, read_checkpoint, wrn_shape
from trustvision.runs import RunDir, environment_info
from trustvision.train import checkpoint as ckpt
from trustvision.train.recipe import WEIGHTS

PROVENANCE = (
    "weights imported from the RobustBench model zoo: trained by their authors on their data, "
    "which may include the validation images a mix chooses its knobs on"
)


def import_zoo(
    checkpoint: Path,
    *,
    dataset: str,
    eps: float | None = None,
    like: Path | None = None,
    runs_dir: str = "runs",
    name: str | None = None,
) -> RunDir:
    """Import `checkpoint` (a zoo WideResNet for `dataset`) as a finished base run."""
    state = read_checkpoint(checkpoint)
    depth, widen, classes = wrn_shape(state)
    data = load_dataset(dataset)
    if classes != data.num_classes or state["conv1.weight"].shape[1] != data.image_shape[0]:
        raise ConfigError(
            f"`{checkpoint}` classifies {classes} classes from "
            f"{state['conv1.weight'].shape[1]}-channel images; `{dataset}` has "
            f"{data.num_classes} classes of {data.image_shape[0]} channel(s)"
        )
    split = _split_like(like, dataset)
    cfg = _config(
        checkpoint, dataset, split, depth=depth, widen=widen, runs_dir=runs_dir, name=name
    )
    identity = ((0.0,) * data.image_shape[0], (1.0,) * data.image_shape[0])
    model = build_pixel_model(
        cfg.model,
        num_classes=classes,
        image_shape=data.image_shape,
        mean=identity[0],
        std=identity[1],
    )
    model.net.load_state_dict(map_wrn(state, model.net.state_dict()))
    run = RunDir.create(root=runs_dir, name=cfg.name, config=cfg)
    ckpt.save_weights(run.path / WEIGHTS, model.state_dict(), {"model": "wrn"})
    record = data_record(
        data,
        train_images=len(data.train),
        split=split_record(cfg.data, seed=cfg.seed, validation_images=split["validation_images"]),
    )
    run.write_summary(
        {
            "status": "finished",
            "kind": "base",
            "model": "wrn",
            "parameters": model.num_parameters(),
            "attack": {"method": "imported", "eps": eps},
            "data": record | {"mean": list(identity[0]), "std": list(identity[1])},
            "zoo": describe_zoo(checkpoint, state),
            "provenance": PROVENANCE,
            "environment": environment_info(torch.device("cpu")),
        }
    )
    return run


def _config(
    checkpoint: Path,
    dataset: str,
    split: dict[str, Any],
    *,
    depth: int,
    widen: int,
    runs_dir: str,
    name: str | None,
) -> RobustTrainConfig:
    """The run's config: our `wrn` of the zoo model's shape, the hold-out of `split`."""
    return RobustTrainConfig(
        name=name or f"zoo-{checkpoint.stem}",
        seed=split["seed"],
        runs_dir=runs_dir,
        device="cpu",
        model=ModelConfig(name="wrn", kwargs={"depth": depth, "widen": widen}),
        data=DataConfig(
            name=dataset,
            validation=split["validation"],
            train_subset=split["train_subset"],
            imbalance_factor=split["imbalance_factor"],
        ),
    )


def _split_like(like: Path | None, dataset: str) -> dict[str, Any]:
    """The hold-out settings of the base run `like` (the defaults without one)."""
    if like is None:
        default = DataConfig()
        return {
            "validation": default.validation,
            "validation_images": 0,
            "seed": 0,
            "train_subset": None,
            "imbalance_factor": None,
        }
    data = read_finished(like)["data"]
    if data.get("name") != dataset:
        raise ConfigError(f"`{like}` was trained on `{data.get('name')}`, not `{dataset}`")
    keys = ("validation", "validation_images", "seed", "train_subset", "imbalance_factor")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ConfigError(f"`{like}` records no validation hold-out ({', '.join(missing)})")
    return {k: data[k] for k in keys}
