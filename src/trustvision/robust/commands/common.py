"""What the robust verbs share: their log, the eps of a data set, what a run holds, and how a
mix's summary records the choice of its knobs."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trustvision.config import load_config
from trustvision.data.dataset import Dataset
from trustvision.errors import ConfigError
from trustvision.files import write_atomic
from trustvision.robust.config import (
    DEFAULT_EPS,
    APGDSettings,
    MixConfig,
    RobustTrainConfig,
    SweepSettings,
)
from trustvision.robust.evaluate import recorded_dataset, validation_indices, validation_pixels
from trustvision.robust.pixels import Normalized
from trustvision.robust.runs import data_of, load_base, read_finished
from trustvision.robust.sweep import Robustness, point_key, robust_accuracy
from trustvision.train.checkpoint import computed_by, warn_if_computed_otherwise

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """The default log of a verb called from code: says nothing."""


def eps_for(data: dict[str, Any], eps: float | None) -> float:
    """The given eps, else the data set's usual l_inf budget."""
    if eps is not None:
        return eps
    if data["name"] not in DEFAULT_EPS:
        raise ConfigError(f"data set `{data['name']}` has no default eps: set `eps` explicitly")
    return DEFAULT_EPS[data["name"]]


def describe(path: str | Path) -> dict[str, Any]:
    """Kind ("standard", "robust", "smoothing", "fixed mix", "adaptive mix") and architecture."""
    summary = read_finished(path)
    if summary.get("kind") == "mix":
        std, rob = describe(summary["standard"]), describe(summary["robust"])
        arch = f"{std['architecture']} + {rob['architecture']}"
        if summary["mix_kind"] == "adaptive":
            arch += " + mixing network"
        return {"kind": f"{summary['mix_kind']} mix", "architecture": arch}
    method = summary["attack"]["method"]
    kind = {"standard": "standard", "gaussian": "smoothing"}.get(method, "robust")
    return {"kind": kind, "architecture": summary["model"], "method": method}


VALIDATION_DRAWN = (
    "training images both bases held out (`data.validation` of their training split, "
    "stratified by class, drawn from their seed), never trained on by either base or by the "
    "mixing network; the first N of a seeded stratified random order of that hold-out"
)


def absolute(path: str | Path) -> str:
    """A run directory as a mix records it: absolute, so that the mix's mix.json and summary
    lead to its bases from any working directory."""
    return str(Path(path).resolve())


def mix_spec(
    cfg: MixConfig, *, temperature_std: float, temperature_rob: float, **extra: Any
) -> dict[str, Any]:
    """A mix's mix.json: its kind, its two bases (absolute paths, so that the mix loads from
    any working directory), its temperatures and its own knobs."""
    return {
        "kind": cfg.kind,
        "standard": absolute(cfg.standard),
        "robust": absolute(cfg.robust),
        "temperature_std": temperature_std,
        "temperature_rob": temperature_rob,
        **extra,
    }


def base_records(cfg: MixConfig) -> dict[str, dict[str, Any]]:
    """The data records of a mix's two bases, keyed by run directory."""
    return {str(path): data_of(path) for path in (cfg.standard, cfg.robust)}


def validation_info(
    dataset: Dataset, bases: dict[str, dict[str, Any]], sweep: SweepSettings
) -> dict[str, Any]:
    """Which validation images a sweep reads: how many, and how they were drawn."""
    held = len(validation_indices(dataset.train.labels, bases))
    split = next(iter(bases.values()))
    # an imported zoo base copied a hold-out record it never kept: its authors' training
    # images may include these, and the record must not say otherwise
    imported = [path for path in bases if "provenance" in read_finished(path)]
    drawn = VALIDATION_DRAWN
    if imported:
        drawn = (
            f"{VALIDATION_DRAWN}; but {', '.join(f'`{p}`' for p in imported)} was imported "
            "(RobustBench), and its authors' training images may include these"
        )
    return {
        "images_attacked": min(sweep.subset, held),
        "images_clean": held if sweep.clean_subset is None else min(sweep.clean_subset, held),
        "held_out": held,
        "drawn": drawn,
        "imported_bases": imported,
        "split": {k: split[k] for k in ("validation", "seed", "train_subset", "imbalance_factor")},
        "bases": list(bases),
    }


def knob_records(
    chosen: dict[str, Any], grids: Mapping[str, Sequence[float]]
) -> dict[str, dict[str, Any]]:
    """Per knob: the value kept, the candidates and what chose it (`validation`; `config` for a
    single candidate; `unused` for a temperature the chosen alpha ignores)."""
    records = {}
    for knob, grid in grids.items():
        candidates = list(dict.fromkeys(grid))
        value = chosen.get(knob)
        by = "unused" if value is None else "validation" if len(candidates) > 1 else "config"
        records[knob] = {"value": value, "grid": candidates, "selected_by": by}
    return records


def selection_record(
    *,
    points: list[dict[str, Any]],
    chosen: dict[str, Any],
    grids: Mapping[str, Sequence[float]],
    rule: str,
    validation: dict[str, Any] | None,
    attack: str | None,
    reference: float | None,
) -> dict[str, Any]:
    """What a mix's summary says about how its knobs were chosen, with the grid's numbers."""
    knobs = knob_records(chosen, grids)
    chose = any(k["selected_by"] == "validation" for k in knobs.values())
    return {
        "selected_by": "validation" if chose else "config",
        "knobs": knobs,
        "rule": rule,
        "reference_robust_acc": reference,
        "validation_images": validation,
        "attack": attack,
        "points": points,
        "chosen": chosen,
    }


def data_name(cfg: MixConfig) -> str:
    """The data set name of a mix config (for titles)."""
    return str(data_of(cfg.robust)["name"])


def attack_label(sweep: SweepSettings, images: int) -> str:
    """How a sweep attacked its validation images, for plots and summaries."""
    parts = [_attack_part(name, sweep.attack) for name in sweep.attack.attacks]
    return f"{' + '.join(parts)} on {images} validation images"


def _attack_part(name: str, attack: APGDSettings) -> str:
    if name == "square":
        return f"SQUARE ({attack.square_queries} queries)"
    targets = f", {attack.n_target_classes} targets" if name in ("apgd-t", "fab-t") else ""
    return f"{name.upper()} ({attack.n_iter} it.{targets})"


@dataclass(frozen=True)
class MixInputs:
    """What both kinds of mix start from: the two bases and the validation images."""

    standard: Normalized
    robust: Normalized
    data: dict[str, Any]  # the robust base's data record
    dataset: Dataset
    bases: dict[str, dict[str, Any]]  # each base's data record, by run directory
    images: tuple[Tensor, Tensor]  # validation images (on the device) and labels
    info: dict[str, Any]  # which validation images, how drawn (validation_info)
    eps: float
    eval_batch_size: int  # the robust base's `data.eval_batch_size`


def mix_inputs(cfg: MixConfig, device: torch.device) -> MixInputs:
    """Load both bases and the validation images they held out (checked to be enough)."""
    data = data_of(cfg.robust)
    dataset = recorded_dataset(data)
    bases = base_records(cfg)
    x, y = validation_pixels(dataset, bases, count=cfg.sweep.clean_subset)
    if cfg.sweep.subset > len(y):
        raise ConfigError(
            f"`sweep.subset={cfg.sweep.subset}` asks for more validation images than the bases "
            f"held out ({len(y)}): lower it, or retrain both bases with a larger `data.validation`"
        )
    return MixInputs(
        standard=load_base(cfg.standard, device=device),
        robust=load_base(cfg.robust, device=device),
        data=data,
        dataset=dataset,
        bases=bases,
        images=(x.to(device), y.to(device)),
        info=validation_info(dataset, bases, cfg.sweep),
        eps=eps_for(data, cfg.eps),
        eval_batch_size=load_config(
            RobustTrainConfig, Path(cfg.robust) / "config.yaml"
        ).data.eval_batch_size,
    )


POINTS = "sweep-points.json"


class PointStore:
    """A sweep's attacked points (its `Robustness` by `sweep.point_key`) and the robust base's
    reference accuracy, kept in its run directory as they come, so that an interrupted sweep
    of the same `signature` attacks none of them again. Attacks are seeded: a kept point is
    the one the attack would give."""

    def __init__(self, path: Path, signature: dict[str, Any]) -> None:
        self.path, self.signature = path, signature
        try:
            saved = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, json.JSONDecodeError):  # a damaged file: the sweep starts again
            saved = {}
        if not isinstance(saved, dict) or saved.get("signature") != signature:
            saved = {}
        points = saved.get("points", {})
        self.computed = computed_so_far(path, saved.get("computed_by") if points else None)
        self.done: dict[str, Robustness] = {k: Robustness(*v) for k, v in points.items()}
        self.reference: float | None = saved.get("reference")

    def record(self, point: dict[str, Any]) -> None:
        if point.get("robust_acc") is None:  # not attacked (the lazy sweep)
            return
        self.done[point_key(point)] = Robustness(
            point["robust_acc"], point["seconds"], point.get("robust_complete", True)
        )
        self._save()

    def record_reference(self, reference: float) -> None:
        self.reference = reference
        self._save()

    def _save(self) -> None:
        body = {
            "signature": self.signature,
            "computed_by": self.computed,
            "reference": self.reference,
            "points": {k: list(v) for k, v in self.done.items()},
        }
        write_atomic(self.path, json.dumps(body))


def computed_so_far(path: Path, recorded: Any) -> list[dict[str, int]]:
    """Who computed the results kept in `path` (`computed_by` records: processes and threads,
    one per combination seen, an older file's single record included) and this process: a
    warning when any differs from this process, as kept results then differ in their last
    digits from an uninterrupted run's."""
    records = recorded if isinstance(recorded, list) else [recorded]
    seen = [r for r in records if isinstance(r, dict)]
    any(warn_if_computed_otherwise(path, other) for other in seen)  # one warning at most
    now = computed_by()
    return seen if now in seen else [*seen, now]


def reference_robustness(
    cfg: MixConfig, inputs: MixInputs, store: PointStore, *, log: Log
) -> float:
    """The robust base's accuracy under the sweep's attack on the sweep's validation images,
    the reference both mixes are admitted against: measured once, then kept in `store`."""
    reference = store.reference
    if reference is None:
        x, y = inputs.images
        n = cfg.sweep.subset
        reference = robust_accuracy(
            inputs.robust, x[:n], y[:n], eps=inputs.eps, settings=cfg.sweep, seed=cfg.seed
        ).acc
        store.record_reference(reference)
    log(f"robust base on validation images: {reference:.2%}")
    return reference


def admission_rule(tolerance: float) -> str:
    """The rule both mixes are chosen by, as their summaries state it."""
    return (
        "the most accurate grid point (validation clean accuracy) whose validation robust "
        f"accuracy is within {tolerance:g} of the robust base's on the same images"
    )


def sweep_signature(cfg: MixConfig, eps: float, **extra: Any) -> dict[str, Any]:
    """What makes a sweep's attacked points valid again: bases, eps, seed, sweep settings."""
    return {
        "standard": cfg.standard,
        "robust": cfg.robust,
        "eps": eps,
        "seed": cfg.seed,
        "sweep": cfg.sweep.model_dump(mode="json"),
        **extra,
    }
