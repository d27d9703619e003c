"""The one training loop and the one evaluation path, shared by every system.

A system changes what a step computes through an `Objective` (model, images, labels ->
loss, logits): adversarial training perturbs the images inside it, dual-branch training
sums two losses. Everything else (device, AMP, divergence checks, schedules, checkpoints,
metrics, the run directory) lives here once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustvision import distributed
from trustvision.data.loader import BatchLoader
from trustvision.errors import ConfigError, DivergenceError
from trustvision.runs import RunDir
from trustvision.seeds import derive_seed
from trustvision.train import checkpoint as ckpt
from trustvision.train.divergence import diverged, non_finite
from trustvision.train.metrics import summarize

ModuleT = TypeVar("ModuleT", bound=nn.Module)
Objective = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]]
Predictor = Callable[[Tensor], Tensor]


def cross_entropy(*, label_smoothing: float = 0.0) -> Objective:
    """The plain objective: cross-entropy of the model's logits."""

    def objective(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return objective


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else the CPU; an unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(
            f"`device={name}` is not a device name (auto, cpu, cuda, cuda:N)"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"`device={name}` asked for CUDA, but this machine has none; use `device=auto`"
        )
    return device


@dataclass(frozen=True)
class Accel:
    """Speed-ups: bfloat16 autocast on CUDA only; channels-last layout on every device (on the
    CPU it trains our models 1.3-1.4x faster: docs/results/memory-format.md)."""

    device: torch.device
    amp: bool = True
    channels_last: bool = True

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_model(self, model: ModuleT) -> ModuleT:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model

    def prepare_batch(self, x: Tensor) -> Tensor:
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x


class Reporter(Protocol):
    """Progress display: a rich bar on a terminal, a plain line per epoch otherwise."""

    def start(self, title: str, total: int) -> None: ...
    def advance(self) -> None: ...
    def finish(self, record: dict[str, Any]) -> None: ...


class SilentReporter:
    """A reporter that shows nothing (tests, library use)."""

    def start(self, title: str, total: int) -> None:
        pass

    def advance(self) -> None:
        pass

    def finish(self, record: dict[str, Any]) -> None:
        pass


def train_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    accel: Accel,
    grad_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimiser step; returns the detached loss and logits. Raises on a non-finite loss."""
    with accel.autocast():
        loss, logits = objective(model, accel.prepare_batch(x), y)
    if not distributed.finite_everywhere(loss):
        where = " (on this or another process)" if distributed.world_size() > 1 else ""
        raise DivergenceError(f"the loss became {loss.item()}{where}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach(), logits.detach()


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    accel: Accel,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
    reporter: Reporter | None = None,
) -> dict[str, float]:
    """Train over `batches` once; returns mean loss, accuracy, images and seconds."""
    model.train()
    loss_sum = torch.zeros((), device=accel.device)
    correct = torch.zeros((), device=accel.device, dtype=torch.int64)
    seen, start = 0, time.perf_counter()
    for x, y in batches:
        loss, logits = train_step(
            model, x, y, optimizer=optimizer, objective=objective, accel=accel, grad_clip=grad_clip
        )
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.float() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if reporter is not None:
            reporter.advance()
    seconds = time.perf_counter() - start
    count = torch.tensor(float(seen), dtype=torch.float64, device=accel.device)
    totals = distributed.sum_over_ranks(
        torch.stack([loss_sum.double(), correct.double(), count])
    ).tolist()
    loss_total, correct_total, seen = totals[0], totals[1], int(totals[2])
    return {
        "train_loss": loss_total / max(seen, 1),
        "train_acc": correct_total / max(seen, 1),
        "train_images": seen,
        "train_seconds": seconds,
        "train_images_per_s": seen / seconds if seconds > 0 else 0.0,
    }


@torch.no_grad()
def predict(
    predictor: Predictor, batches: Iterable[tuple[Tensor, Tensor]], *, accel: Accel
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits-producing `predictor` over `batches`: (logits, labels, mean loss) on the CPU."""
    all_logits, all_labels = [], []
    for x, y in batches:
        with accel.autocast():
            logits = predictor(accel.prepare_batch(x))
        all_logits.append(logits.float().cpu())
        all_labels.append(y.cpu())
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    loss = F.cross_entropy(logits, labels) if len(labels) else torch.tensor(float("nan"))
    return logits, labels, loss


def evaluate(
    predictor: Predictor | nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    accel: Accel,
    train_counts: np.ndarray | None = None,
) -> dict[str, Any]:
    """Top-1, loss, per-class and (given training class counts) head/middle/tail accuracy."""
    if isinstance(predictor, nn.Module):
        predictor.eval()
    logits, labels, loss = predict(predictor, batches, accel=accel)
    result = summarize(
        logits.argmax(1).numpy(), labels.numpy(), num_classes, train_counts=train_counts
    )
    result["loss"] = float(loss)
    return result


@dataclass
class FitResult:
    """What `fit` returns: the final evaluations and the per-epoch history."""

    final: dict[str, Any] | None  # on the test set, when the run has one
    history: list[dict[str, Any]]
    wall_seconds: float
    validation: dict[str, Any] | None = None  # on the validation hold-out, when there is one


@dataclass(frozen=True)
class Batches:
    """The loaders one training reads: `val` (when the run holds images out) and `test` (when
    it reports on them; the mixing network, which never reads a test image, has none) are
    evaluated every epoch."""

    train: BatchLoader
    test: BatchLoader | None
    val: BatchLoader | None = None
    train_counts: np.ndarray | None = None  # per-class training images, for the final metrics


@dataclass
class _Training:
    """What every epoch of one `fit` shares."""

    model: nn.Module
    batches: Batches
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: Objective
    accel: Accel
    num_classes: int
    seed: int
    run: RunDir
    grad_clip: float | None
    reporter: Reporter

    def epoch(self, epoch: int, epochs: int) -> dict[str, Any]:
        """Train one epoch (reseeded from (seed, epoch)) and evaluate; its record."""
        rank = () if distributed.world_size() == 1 else (distributed.rank(),)
        torch.manual_seed(derive_seed(self.seed, "torch", epoch, *rank))  # own draws per rank
        self.reporter.start(f"epoch {epoch + 1}/{epochs}", len(self.batches.train))
        try:
            record = train_epoch(
                distributed.wrap(self.model),
                distributed.shares(self.batches.train.epoch(epoch)),
                optimizer=self.optimizer,
                objective=self.objective,
                accel=self.accel,
                scheduler=self.scheduler,
                grad_clip=self.grad_clip,
                reporter=self.reporter,
            )
        except DivergenceError as err:
            raise diverged(self.run, err, unit="epoch", number=epoch + 1) from None
        distributed.sync_buffers(self.model)
        record = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], **record}
        for prefix, loader in (("val", self.batches.val), ("test", self.batches.test)):
            if loader is not None:
                scores = self.evaluate(loader)
                record.update({f"{prefix}_loss": scores["loss"], f"{prefix}_acc": scores["top1"]})
        problem = non_finite(self.model, record)
        if problem is not None:
            raise diverged(self.run, DivergenceError(problem), unit="epoch", number=epoch + 1)
        return record

    def evaluate(self, loader: BatchLoader, counts: np.ndarray | None = None) -> dict[str, Any]:
        return evaluate(
            self.model,
            loader.epoch(0),
            num_classes=self.num_classes,
            accel=self.accel,
            train_counts=counts,
        )

    def checkpoint(self, epoch: int, *, elapsed: float, history: list[dict[str, Any]]) -> None:
        """Save the state after `epoch` (0-based) and keep the newest two checkpoints."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch + 1,
            "elapsed": elapsed,
            "history": history,
            "rng": {"seed": self.seed, "next_epoch": epoch + 1, **ckpt.computed_by()},
        }
        ckpt.save_checkpoint(self.run.checkpoints_dir / f"epoch-{epoch + 1:04d}", state)
        ckpt.prune_checkpoints(self.run.checkpoints_dir, keep=2)


def fit(
    model: nn.Module,
    *,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    objective: Objective,
    epochs: int,
    seed: int,
    accel: Accel,
    num_classes: int,
    run: RunDir,
    grad_clip: float | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    reporter: Reporter | None = None,
    before_epoch: Callable[[int], None] | None = None,
    after_epoch: Callable[[int], dict[str, Any]] | None = None,
    checkpoint: str | None = None,
) -> FitResult:
    """Train for `epochs`, evaluating, logging and checkpointing after each; resumable.

    Each epoch reseeds torch's global RNG (dropout) from (seed, epoch) and the loader derives
    its shuffling and augmentation from (seed, epoch) too, so an epoch's result depends only
    on the state at its start: a resumed run ends exactly as an uninterrupted one would.
    `before_epoch(epoch)` runs first in every epoch, resumed or not (progressive unfreezing
    sets `requires_grad` there). With `batches.val`, every epoch is evaluated on the
    validation hold-out too (`val_acc`), the number a choice between runs or epochs may read.
    `after_epoch(epoch)` runs after the evaluation; what it returns joins the epoch's record.
    `checkpoint` names the checkpoint a resumed run starts from (default: the newest good one).
    """
    shown = reporter if reporter is not None and distributed.is_main() else SilentReporter()
    training = _Training(
        model, batches, optimizer, scheduler, objective, accel, num_classes, seed, run,
        grad_clip, shown,
    )  # fmt: skip
    restored = ckpt.restore(run, model, optimizer, scheduler, checkpoint) if resume else None
    start_epoch, elapsed, history = restored or (0, 0.0, [])
    began = time.perf_counter() - elapsed
    for epoch in range(start_epoch, epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        record = training.epoch(epoch, epochs)
        if after_epoch is not None:
            record.update(after_epoch(epoch))
        history.append(record)
        run.log(record)
        training.reporter.finish(record)
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs:
            training.checkpoint(epoch, elapsed=time.perf_counter() - began, history=history)
    counts = batches.train_counts
    return FitResult(
        final=None if batches.test is None else training.evaluate(batches.test, counts),
        history=history,
        wall_seconds=time.perf_counter() - began,
        validation=None if batches.val is None else training.evaluate(batches.val, counts),
    )
