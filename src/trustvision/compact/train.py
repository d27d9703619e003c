"""`trustvision compact train`: stage 1 (dual), unification, stage 2 (unfreezing) and baselines.

One run directory holds every row of the ablation, each in its own sub-directory with
the core's files (metrics.jsonl, checkpoints/, summary.json, model.safetensors):

    stage1-dual/   the dual-input-output model (both branches)
    full/          unified model, progressive unfreezing (the deployed model)
    no_unfreeze/   unified model, every group trained from the first stage-2 epoch
    plain/         the deployed architecture trained from scratch, as many epochs
    model.safetensors, summary.json   the deployed model and the table of rows

A finished sub-run is skipped and an unfinished one resumes from its last checkpoint, so
running the same config into the same directory again completes an interrupted run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trustvision.compact.config import CompactConfig, UnifyMode
from trustvision.compact.dual import (
    AugmentedBatches,
    BatchMode,
    DualModel,
    build_dual,
    dual_objective,
)
from trustvision.compact.model import (
    RESUME,
    build_model,
    check_budget,
    count_macs,
    write_deployed,
)
from trustvision.compact.unfreeze import (
    ProgressiveUnfreezing,
    all_at_once,
    discriminative_scales,
    unfreeze_schedule,
)
from trustvision.compact.unify import average_states, recalibrate_bn, unify
from trustvision.config import OptimConfig, load_config
from trustvision.data.dataset import Dataset
from trustvision.data.loader import BatchLoader
from trustvision.errors import ConfigError
from trustvision.models import ImageClassifier
from trustvision.runs import RunDir, environment_info
from trustvision.seeds import derive_seed
from trustvision.train import checkpoint as ckpt
from trustvision.train.loop import (
    Accel,
    Batches,
    Objective,
    Reporter,
    cross_entropy,
    evaluate,
)
from trustvision.train.recipe import WEIGHTS, load_with_loaders, run_settings, train_into_run

DUAL, FULL, NO_UNFREEZE, PLAIN = "stage1-dual", "full", "no_unfreeze", "plain"
FINAL_KEYS = ("top1", "loss", "per_class")  # what a sub-run's summary keeps of its test scores


@dataclass
class Setup:
    """Everything the stages share: config, device, data and loaders."""

    cfg: CompactConfig
    accel: Accel
    dataset: Dataset
    train: BatchLoader  # the training tensors and `data.augment`: the source of both views
    test: BatchLoader
    val: BatchLoader | None  # the `data.validation` hold-out (None when it is 0)
    reporter: Reporter | None

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def loader(self, mode: BatchMode, *, prob: float | None = None) -> AugmentedBatches:
        """`pair` batches for stage 1, `mixed` for the plain baseline and stage 2.

        `prob`: the chance of the augmented copy in `mixed` batches (default `augment_prob`).
        """
        prob = self.cfg.augment_prob if prob is None else prob
        return AugmentedBatches(self.train, mode=mode, prob=prob, seed=self.cfg.seed)


def prepare(cfg: CompactConfig, reporter: Reporter | None, device: torch.device) -> Setup:
    """Load the data, build the loaders and check the budget (before any training)."""
    dataset, loaders = load_with_loaders(cfg.data, seed=cfg.seed, device=device)
    check_budget(
        build_model(cfg, num_classes=dataset.num_classes, image_shape=dataset.image_shape),
        budget=cfg.budget,
        name=cfg.model.name,
    )
    accel = Accel(device, amp=False, channels_last=False)
    return Setup(cfg, accel, dataset, loaders.train, loaders.test, loaders.val, reporter)


def sub_run(run: RunDir, name: str) -> RunDir:
    """The directory of one row (or stage 1) inside the run."""
    sub = run.part(name)
    sub.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    if ckpt.latest_checkpoint(sub.checkpoints_dir) is None:
        sub.metrics_path.unlink(missing_ok=True)  # records of an epoch that never finished
    return sub


def train_stage(
    model: nn.Module,
    *,
    setup: Setup,
    sub: RunDir,
    loader: BatchLoader,
    objective: Objective,
    optim: OptimConfig,
    epochs: int,
    groups: Sequence[nn.Module] | None = None,
    lr_scales: Sequence[float] | None = None,
    before_epoch: ProgressiveUnfreezing | None = None,
) -> dict[str, Any]:
    """Train one stage with the core loop (or load it, if it finished before); its summary."""
    if sub.finished:
        model.load_state_dict(ckpt.load_weights(sub.path / WEIGHTS))
        return sub.read_summary()
    result = train_into_run(
        model,
        sub,
        batches=Batches(loader, setup.test, setup.val),
        objective=objective,
        optim=optim,
        epochs=epochs,
        seed=setup.cfg.seed,
        accel=setup.accel,
        num_classes=setup.num_classes,
        resume=True,
        reporter=setup.reporter,
        checkpoint_every=setup.cfg.checkpoint_every,
        groups=groups,
        lr_scales=lr_scales,
        before_epoch=before_epoch,
    )
    images = sum(r["train_images"] for r in result.history)
    assert result.final is not None  # a compact stage always has its test loader
    summary = {
        "status": "finished",
        "epochs": epochs,
        "wall_seconds": result.wall_seconds,
        "train_images": images,
        "test": {k: result.final[k] for k in FINAL_KEYS},
    }
    if result.validation is not None:
        summary["validation"] = {k: result.validation[k] for k in ("top1", "loss")}
    sub.write_summary(summary)
    return summary


def stage_one(setup: Setup, run: RunDir) -> tuple[DualModel, dict[str, Any]]:
    """Train the dual model; its summary also holds each branch's own test accuracy."""
    cfg = setup.cfg
    dual = build_dual(
        build_model(cfg, num_classes=setup.num_classes, image_shape=setup.dataset.image_shape)
    ).to(setup.accel.device)
    summary = train_stage(
        dual,
        setup=setup,
        sub=sub_run(run, DUAL),
        loader=setup.loader("pair"),
        objective=dual_objective(
            weights=cfg.dual.loss_weights, label_smoothing=cfg.dual.optim.label_smoothing
        ),
        optim=cfg.dual.optim,
        epochs=cfg.dual.epochs,
    )
    summary["branches"] = branch_accuracies(setup, dual)
    summary["branches_on"] = "validation" if setup.val is not None else "test"
    # Images through a model: each step trains both branches, one view each.
    summary["image_passes"] = 2 * summary["train_images"]
    return dual, summary


def bn_batches(setup: Setup) -> Iterator[tuple[Tensor, Tensor]]:
    """The first `unify.bn_batches` mixed training batches (BatchNorm re-estimation)."""
    batches = setup.loader("mixed").epoch(0)
    return (b for _, b in zip(range(setup.cfg.unify.bn_batches), batches, strict=False))


def branch_accuracies(setup: Setup, dual: DualModel) -> dict[str, float]:
    """Top-1 of each branch with its own head, and of the two averaged weight by weight, on the
    validation hold-out when the run has one (these numbers choose settings), else on test."""
    averaged = copy.deepcopy(dual.original)
    averaged.load_state_dict(
        average_states(dual.original.state_dict(), dual.augmented.state_dict())
    )
    recalibrate_bn(averaged, bn_batches(setup))
    models = {**dual.branches(), "weight_average": averaged}
    loader = setup.val or setup.test
    return {
        name: evaluate(model, loader.epoch(0), num_classes=setup.num_classes, accel=setup.accel)[
            "top1"
        ]
        for name, model in models.items()
    }


def stage_two(
    setup: Setup, run: RunDir, dual: DualModel, *, row: str, directory: str | None = None
) -> dict[str, Any]:
    """Unify the branches and fine-tune: progressively (`full`) or all at once (`no_unfreeze`).

    The row is trained into `directory` (default: the row's name) inside the run.
    """
    cfg, ft = setup.cfg, setup.cfg.finetune
    torch.manual_seed(derive_seed(cfg.seed, "head"))  # both rows start from the same head
    model = unify(
        dual, mode=cfg.unify.mode, num_classes=setup.num_classes, bn_batches=bn_batches(setup)
    )
    groups = model.layer_groups()
    if row == FULL:
        schedule = unfreeze_schedule(
            len(groups),
            epochs_per_group=ft.epochs_per_group,
            unfreeze_at=ft.unfreeze_at,
            epochs=ft.epochs,
        )
    else:
        schedule = all_at_once(len(groups))
    scales = discriminative_scales(len(groups), decay=ft.lr_decay) if ft.discriminative else None
    unfreezing = ProgressiveUnfreezing(groups, schedule)
    summary = train_stage(
        model,
        setup=setup,
        sub=sub_run(run, directory or row),
        loader=setup.loader("mixed", prob=ft.augment_prob),
        objective=cross_entropy(label_smoothing=ft.optim.label_smoothing),
        optim=ft.optim,
        epochs=ft.epochs,
        groups=groups,
        lr_scales=scales,
        before_epoch=unfreezing,
    )
    unfreezing.release()
    summary["schedule"] = schedule
    summary["image_passes"] = summary["train_images"]
    summary["model"] = model
    return summary


def plain_row(setup: Setup, run: RunDir) -> dict[str, Any]:
    """The deployed architecture trained from scratch on mixed batches, as many epochs in all."""
    cfg = setup.cfg
    model = build_model(
        cfg, num_classes=setup.num_classes, image_shape=setup.dataset.image_shape
    ).to(setup.accel.device)
    summary = train_stage(
        model,
        setup=setup,
        sub=sub_run(run, PLAIN),
        loader=setup.loader("mixed"),
        objective=cross_entropy(label_smoothing=cfg.dual.optim.label_smoothing),
        optim=cfg.dual.optim,
        epochs=cfg.total_epochs,
    )
    summary["image_passes"] = summary["train_images"]
    summary["model"] = model
    return summary


def train_compact(
    cfg: CompactConfig, *, run_dir: Path | None = None, reporter: Reporter | None = None
) -> RunDir:
    """Train every row of `cfg.rows` into one run directory; the `full` model is deployed."""
    with run_settings(cfg, data_parallel=True) as device:
        setup = prepare(cfg, reporter, device)
        run, _ = RunDir.open_or_create(
            run_dir, root=cfg.runs_dir, name=cfg.name, config=cfg, resume_hint=RESUME
        )
        started = time.perf_counter()
        rows: dict[str, dict[str, Any]] = {}
        dual_summary = None
        if FULL in cfg.rows or NO_UNFREEZE in cfg.rows:
            dual, dual_summary = stage_one(setup, run)
            for row in (NO_UNFREEZE, FULL):
                if row in cfg.rows:
                    rows[row] = stage_two(setup, run, dual, row=row)
        if PLAIN in cfg.rows:
            rows[PLAIN] = plain_row(setup, run)
        deployed = next(r for r in (FULL, NO_UNFREEZE, PLAIN) if r in rows)
        model = rows[deployed]["model"]
        write_deployed(run, model=model, cfg=cfg, row=deployed)
        summary = run_summary(
            setup,
            model=model,
            rows=rows,
            dual=dual_summary,
            deployed=deployed,
            wall=time.perf_counter() - started,
        )
        run.write_summary(summary)
    return run


def unify_variant(
    run: RunDir, *, mode: UnifyMode, reporter: Reporter | None = None
) -> dict[str, Any]:
    """The `full` row again, from the run's trained stage 1, with another unification mode.

    Trained into `full-unify-<mode>/` (skipped when finished); returns its summary. The
    deployed model and the run's summary are left as they are.
    """
    cfg = load_config(CompactConfig, run.config_path)
    if not RunDir(run.path / DUAL).finished:
        raise ConfigError(
            f"`{run.path}` has no finished stage 1: finish it with "
            f"`trustvision compact train --resume {run.path}`"
        )
    cfg = cfg.model_copy(update={"unify": cfg.unify.model_copy(update={"mode": mode})})
    with run_settings(cfg) as device:  # writes into `run` directly: one process only
        setup = prepare(cfg, reporter, device)
        dual, _ = stage_one(setup, run)  # finished: loads the branches
        summary = stage_two(setup, run, dual, row=FULL, directory=f"{FULL}-unify-{mode}")
    return {k: v for k, v in summary.items() if k != "model"}


def run_summary(
    setup: Setup,
    *,
    model: ImageClassifier,
    rows: dict[str, dict[str, Any]],
    dual: dict[str, Any] | None,
    deployed: str,
    wall: float,
) -> dict[str, Any]:
    """The run's summary.json: every row's accuracy and cost, the model's size and MACs."""
    cfg, ds = setup.cfg, setup.dataset
    table = {
        name: {
            "top1": row["test"]["top1"],
            **({"val_top1": row["validation"]["top1"]} if "validation" in row else {}),
            "epochs": row["epochs"] + (dual["epochs"] if dual and name != PLAIN else 0),
            "wall_seconds": row["wall_seconds"]
            + (dual["wall_seconds"] if dual and name != PLAIN else 0),
            "image_passes": row["image_passes"]
            + (dual["image_passes"] if dual and name != PLAIN else 0),
            **({"schedule": row["schedule"]} if "schedule" in row else {}),
        }
        for name, row in rows.items()
    }
    if dual is not None:
        dual = {k: v for k, v in dual.items() if k != "test"} | {"pair_top1": dual["test"]["top1"]}
    return {
        "status": "finished",
        "seed": cfg.seed,
        "deployed": deployed,
        "model": cfg.model.name,
        "parameters": model.num_parameters(),
        "budget": cfg.budget,
        "macs": count_macs(model, model.input_shape),
        "num_classes": model.num_classes,
        "input_shape": list(model.input_shape),
        "rows": table,
        "dual": dual,
        "unify": cfg.unify.mode,
        "wall_seconds": wall,
        "data": {
            "name": ds.name,
            "source": ds.source,
            "variant": ds.variant,
            "mean": list(ds.mean),
            "std": list(ds.std),
            "train_images": setup.train.num_samples,
            "test_images": setup.test.num_samples,
            "validation_images": setup.val.num_samples if setup.val else 0,
        },
        "environment": environment_info(setup.accel.device)
        | {"train_threads": torch.get_num_threads()},
    }
