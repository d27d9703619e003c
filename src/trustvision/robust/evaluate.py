"""Robustness evaluation: clean accuracy, AutoAttack's per-point worst case, and the checks
against gradient masking that every report carries.

Checks (each a pass / fail with its numbers):
- `autoattack<=pgd`: AutoAttack's accuracy is at most that of our plain PGD on the same images;
- `eps->large`: our PGD's accuracy falls (monotonically, up to noise) to about 0 as eps grows;
- `square<=white-box`: the black-box Square attack, run after the gradient attacks, finds at
  most 0.2% more adversarial points (AutoAttack's own rule); not run when Square is not.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trustvision.config import DataConfig
from trustvision.data.dataset import Dataset, load_dataset
from trustvision.data.loader import split_train_indices
from trustvision.errors import ConfigError
from trustvision.robust.attacks import cross_entropy_loss, pgd
from trustvision.robust.autoattack import (
    AttackerSet,
    ChunkResult,
    attack_chunk,
    predict_labels,
)
from trustvision.robust.config import EvalSettings
from trustvision.robust.pixels import logits_of
from trustvision.robust.stats import clopper_pearson
from trustvision.seeds import derive_seed

SQUARE_ALPHA = 0.002  # AutoAttack's check_square_sr threshold
MONOTONE_SLACK = 0.02  # accuracy may rise this much between eps values (sampling noise)


def recorded_dataset(data: dict[str, Any]) -> Dataset:
    """The data set a run was trained on (from the cache, or from the file it was read from)."""
    return load_dataset(data["name"], from_path=data.get("from_path"))


def test_pixels(dataset: Dataset, *, count: int | None = None) -> tuple[Tensor, Tensor]:
    """The first `count` test images as [0, 1] floats, with their labels."""
    end = len(dataset.test) if count is None else min(count, len(dataset.test))
    x = torch.from_numpy(dataset.test.images[:end].copy()).float().div_(255.0)
    return x, torch.from_numpy(dataset.test.labels[:end].copy()).long()


# The settings of a base's data record that fix which training images it held out.
SPLIT_KEYS = ("validation", "seed", "train_subset", "imbalance_factor")
DATA_KEYS = ("name", "source", "variant")  # the same data set, from the same bytes
VALIDATION_FIX = (
    "train both bases with the same `seed` and `data.validation` (> 0; and the same "
    "`data.train_subset` and `data.imbalance_factor`), so that they hold out the same images"
)


def _split_of(run: str, record: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in SPLIT_KEYS if k not in record]
    if missing:
        raise ConfigError(
            f"base run `{run}` records no validation hold-out (no {', '.join(missing)} in its "
            f"summary's `data`: trained before `data.validation` existed): retrain it; {VALIDATION_FIX}"
        )
    return {k: record[k] for k in SPLIT_KEYS}


def base_split(
    labels: np.ndarray, run: str, record: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """`(train, held_out)` indices into the training split of the base run `run`, recomputed
    from its data record with `split_train_indices`, exactly as its training drew them."""
    split = _split_of(run, record)
    cfg = DataConfig(
        name=record["name"],
        validation=split["validation"],
        train_subset=split["train_subset"],
        imbalance_factor=split["imbalance_factor"],
    )
    return split_train_indices(labels, cfg, seed=split["seed"])


def _describe_split(run: str, record: Mapping[str, Any]) -> str:
    split = ", ".join(f"{k}={record.get(k)}" for k in (*DATA_KEYS, *SPLIT_KEYS))
    return f"`{run}` ({split})"


def stratified_order(labels: np.ndarray, *, seed: int) -> np.ndarray:
    """A seeded order of `labels`' positions whose every prefix is stratified by class.

    Each class's members come in a random order; position n goes to the class furthest below
    its share of n (ties broken at random), so the first N hold every class's share of N to
    within two images (about one in practice), for every N.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts / counts.sum()
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    jitter = rng.random(len(classes)) * 1e-9  # breaks exact ties without moving real ones
    taken = np.zeros(len(classes), dtype=np.int64)
    order = np.empty(len(labels), dtype=np.int64)
    for n in range(len(labels)):
        deficit = (n + 1) * share - taken + jitter
        deficit[taken == counts] = -np.inf
        c = int(np.argmax(deficit))
        order[n] = members[c][taken[c]]
        taken[c] += 1
    return order


def validation_indices(labels: np.ndarray, bases: Mapping[str, Mapping[str, Any]]) -> np.ndarray:
    """The training images every base held out, as indices into the training split, in a
    seeded stratified random order (`stratified_order`): the first N are a random sample of
    the hold-out with each class in its share.

    `bases` maps each base run to its data record. All must have held out the same images
    (the same seed, `data.validation` > 0, train subset and imbalance): anything else is a
    ConfigError naming the runs, since an image one base held out may be one the other
    trained on.
    """
    runs = list(bases)
    if not runs:
        raise ValueError("validation_indices needs at least one base run")
    held = {run: base_split(labels, run, bases[run])[1] for run in runs}
    first = runs[0]
    for run in runs:
        if len(held[run]) == 0:
            raise ConfigError(
                f"base run {_describe_split(run, bases[run])} held out no training images, so "
                f"nothing can be chosen on validation images: {VALIDATION_FIX}"
            )
        same_data = all(bases[run].get(k) == bases[first].get(k) for k in DATA_KEYS)
        if not same_data or not np.array_equal(held[run], held[first]):
            raise ConfigError(
                f"base runs {_describe_split(first, bases[first])} and "
                f"{_describe_split(run, bases[run])} held out different training images: "
                f"{VALIDATION_FIX}"
            )
    indices = held[first]
    seed = derive_seed(int(bases[first]["seed"]), "validation-order")
    return indices[stratified_order(np.asarray(labels)[indices], seed=seed)]


def validation_pixels(
    dataset: Dataset, bases: Mapping[str, Mapping[str, Any]], *, count: int | None = None
) -> tuple[Tensor, Tensor]:
    """The first `count` (None: all) validation images of `bases` as [0, 1] floats, with labels.

    Validation images are training images that every base held out (`validation_indices`:
    recomputed from the bases' recorded split, never trained on by them), in a seeded
    stratified random order, so the first `count` are a random sample with each class in its
    share. Asking for more than the bases held out is a ConfigError.
    """
    order = validation_indices(dataset.train.labels, bases)
    if count is not None and count > len(order):
        raise ConfigError(
            f"asked for {count} validation images but the bases held out {len(order)}: lower "
            "`sweep.subset` / `sweep.clean_subset`, or retrain both bases with a larger "
            "`data.validation`"
        )
    chosen = order[: len(order) if count is None else count]
    x = torch.from_numpy(np.asarray(dataset.train.images[chosen])).float().div_(255.0)
    return x, torch.from_numpy(np.asarray(dataset.train.labels[chosen])).long()


def mixnet_train_indices(
    labels: np.ndarray, bases: Mapping[str, Mapping[str, Any]], *, subset: int | None, seed: int
) -> np.ndarray:
    """Sorted training indices the mixing network trains on: images every base trained on (so
    never a validation image), a seeded random `subset` of them (None: all).

    Computed from the bases' own splits, not by re-splitting with the mixing network's
    settings: `split_train_indices` draws the train subset before the hold-out, so another
    `train_subset` would hold out other images.
    """
    validation_indices(labels, bases)  # the bases agree on their hold-out, or a ConfigError
    pool: np.ndarray | None = None
    for run, record in bases.items():
        train = base_split(labels, run, record)[0]
        pool = train if pool is None else np.intersect1d(pool, train)
    assert pool is not None
    if subset is not None and subset < len(pool):
        rng = np.random.default_rng(derive_seed(seed, "mixnet-subset"))
        pool = np.sort(rng.choice(pool, size=subset, replace=False))
    return pool


def clean_correct(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 500) -> Tensor:
    """Per-image correctness on clean images, on the CPU (the model runs where it lives)."""
    return logits_of(model, x, batch_size=batch_size).argmax(1) == y.cpu()


def pgd_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    batch_size: int = 250,
    seed: int = 0,
) -> float:
    """Accuracy under our l_inf PGD (cross-entropy, step 2.5 eps / steps, random start drawn
    from `seed`, so a resumed evaluation attacks as an uninterrupted one did; the caller's
    random state is left as it was)."""
    correct = 0
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            step = 2.5 * eps / steps
            adv = pgd(cross_entropy_loss(model), xb, yb, eps=eps, step_size=step, steps=steps)
            correct += int((predict_labels(model, adv, batch_size=batch_size) == yb).sum())
    return correct / max(len(x), 1)


def eps_sweep(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: Sequence[float], steps: int
) -> list[float]:
    """PGD accuracy at each eps (capped at 1: the whole pixel box)."""
    return [pgd_accuracy(model, x, y, eps=min(e, 1.0), steps=steps) for e in eps]


@dataclass(frozen=True)
class Check:
    """One check against gradient masking: passed (None: not run) and the numbers behind it."""

    name: str
    passed: bool | None
    detail: str


def check_autoattack_vs_pgd(autoattack_acc: float, pgd_acc: float) -> Check:
    """AutoAttack must do at least as well as plain PGD."""
    return Check(
        "autoattack<=pgd",
        autoattack_acc <= pgd_acc,
        f"AutoAttack {autoattack_acc:.2%} vs PGD {pgd_acc:.2%}",
    )


def check_eps_growth(eps: Sequence[float], accs: Sequence[float], *, zero: float) -> Check:
    """Accuracy must fall to about 0 at the largest eps, and never rise by more than noise."""
    rises = [b - a for a, b in itertools.pairwise(accs) if b - a > MONOTONE_SLACK]
    passed = bool(accs) and accs[-1] <= zero and not rises
    points = ", ".join(f"{e:.3g}: {a:.0%}" for e, a in zip(eps, accs, strict=True))
    return Check(
        "eps->large", passed, f"PGD accuracy by eps {points} (needs <= {zero:.0%} at the end)"
    )


def check_square(per_attack_acc: dict[str, float]) -> Check:
    """Square, run last, must not find more than 0.2% of extra points (AutoAttack's rule)."""
    if "square" not in per_attack_acc:
        return Check("square<=white-box", None, "Square was not run")
    names = list(per_attack_acc)
    before = per_attack_acc[names[names.index("square") - 1]] if names.index("square") else None
    if before is None:
        return Check("square<=white-box", None, "Square ran first: nothing to compare")
    drop = before - per_attack_acc["square"]
    return Check(
        "square<=white-box",
        drop <= SQUARE_ALPHA,
        f"Square lowered the accuracy by {drop:.2%} after the gradient attacks",
    )


def summarize_chunks(chunks: Sequence[ChunkResult], order: Sequence[str]) -> dict[str, Any]:
    """Worst-case accuracy, accuracy after each attack, time per attack, images per second."""
    fooled = [f for c in chunks for f in c.fooled_by]
    n = len(fooled)
    robust = sum(f is None for f in fooled)
    seconds = {a: sum(c.seconds.get(a, 0.0) for c in chunks) for a in order}
    after, remaining = {}, sum(f != "clean" for f in fooled)
    for name in order:
        remaining -= sum(f == name for f in fooled)
        after[name] = remaining / max(n, 1)
    total = sum(seconds.values())
    return {
        "n": n,
        "clean_acc": sum(f != "clean" for f in fooled) / max(n, 1),
        "robust_acc": robust / max(n, 1),
        "ci95": list(clopper_pearson(robust, n)),
        "acc_after": after,
        "seconds": seconds,
        "attacked": {a: sum(c.attacked.get(a, 0) for c in chunks) for a in order},
        "total_seconds": total,
        "images_per_s": n / total if total > 0 else None,
    }


def masking_checks(
    *, autoattack: dict[str, Any], pgd_acc: float, sweep: dict[str, list[float]], zero: float
) -> list[Check]:
    """The three checks of every report."""
    return [
        check_autoattack_vs_pgd(autoattack["robust_acc"], pgd_acc),
        check_eps_growth(sweep["eps"], sweep["acc"], zero=zero),
        check_square(autoattack["acc_after"]),
    ]


def attack_report(
    attackers: AttackerSet,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    settings: EvalSettings,
    batch_size: int = 250,
    done: dict[int, ChunkResult] | None = None,
    on_chunk: Callable[[int, ChunkResult], None] | None = None,
) -> dict[str, Any]:
    """AutoAttack chunk by chunk (skipping `done` ones), PGD reference, eps sweep and checks."""
    chunks = dict(done or {})
    for index, start in enumerate(range(0, len(x), settings.chunk)):
        if index in chunks:
            continue
        end = start + settings.chunk
        chunks[index] = attack_chunk(attackers, x[start:end], y[start:end], batch_size=batch_size)
        if on_chunk is not None:
            on_chunk(index, chunks[index])
    ordered = [chunks[i] for i in range(-(-len(x) // settings.chunk))]  # only this subset's
    autoattack = summarize_chunks(ordered, attackers.order)
    model = attackers.model
    started = time.perf_counter()
    pgd_acc = pgd_accuracy(model, x, y, eps=eps, steps=settings.pgd_steps, batch_size=batch_size)
    pgd_seconds = time.perf_counter() - started
    n_sweep = settings.eps_sweep_subset
    sweep_eps = [eps * m for m in settings.eps_multiples]
    sweep = {
        "eps": sweep_eps,
        "acc": eps_sweep(model, x[:n_sweep], y[:n_sweep], eps=sweep_eps, steps=settings.pgd_steps),
    }
    checks = masking_checks(
        autoattack=autoattack, pgd_acc=pgd_acc, sweep=sweep, zero=settings.zero_accuracy
    )
    return {
        "eps": eps,
        "autoattack": autoattack,
        "pgd": {"steps": settings.pgd_steps, "acc": pgd_acc, "seconds": pgd_seconds},
        "eps_sweep": sweep,
        "checks": [asdict(c) for c in checks],
        "masking_suspected": any(c.passed is False for c in checks),
    }
