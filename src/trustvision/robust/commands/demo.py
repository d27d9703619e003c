"""The whole method on one data set, stage by stage in one work directory, resumable.

work/standard, work/robust         `robust train` runs (standard and adversarial training)
work/fixed-mix                     `robust mix`: alpha, s_g, s_h chosen on validation images
work/adaptive-mix                  `robust mix` with the mixing network (if `adaptive`)
work/eval-<model>                  `robust eval`: AutoAttack, masking checks, model card
work/smoothing, work/certify       Gaussian base and certification curves (if `smoothing`)
work/report.json                   every number above, and the paper's goal checked

A finished stage is not redone while it is current, and an evaluation keeps its finished
chunks of images, so an interrupted pipeline continues where it stopped. A stage that is no
longer current (a base trained without the configured validation hold-out or with another
config, a mix whose knobs were not chosen on validation images or whose sweep settings
changed, an evaluation or certification made with other settings) is moved to
work/retired/ together with every stage built on it, and redone; an adaptive mix whose
network trained as configured keeps it and only chooses its gate again (and keeps the sweep
points already attacked, where the sweep settings are the same). `robust demo` and
benchmarks/robust.py both run this.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from trustvision.data.augment import BatchAugment
from trustvision.errors import ConfigError
from trustvision.files import write_atomic
from trustvision.models.registry import create_model
from trustvision.robust.certify import SMOOTHING_LIPSCHITZ
from trustvision.robust.commands.adaptive import gate_choice_differences
from trustvision.robust.commands.certify import run_certify
from trustvision.robust.commands.common import Log, admission_rule
from trustvision.robust.commands.eval import run_eval
from trustvision.robust.commands.mix import run_mix
from trustvision.robust.commands.report import BASES, pipeline_report
from trustvision.robust.commands.train import split_record, train_robust
from trustvision.robust.config import (
    CertifyConfig,
    EvalConfig,
    MixConfig,
    MixNetSettings,
    PipelineConfig,
    RobustTrainConfig,
    SweepSettings,
)
from trustvision.robust.evaluate import SPLIT_KEYS, recorded_dataset
from trustvision.robust.mixing import check_stages
from trustvision.robust.runs import data_of, is_finished, read_finished
from trustvision.runs import RunDir, held_alone
from trustvision.train.loop import Reporter
from trustvision.train.recipe import one_process_only

MIXES = {"fixed": "fixed-mix", "adaptive": "adaptive-mix"}
# Everything built on the two bases, by stage directory.
ON_BASES = (
    "fixed-mix",
    "adaptive-mix",
    "gate-check",  # benchmarks/robust_gate_check.py's mixing networks
    "eval-standard",
    "eval-robust",
    "eval-fixed-mix",
    "eval-adaptive-mix",
    "certify",
)


def _common(cfg: PipelineConfig) -> dict[str, Any]:
    return {
        "seed": cfg.seed,
        "device": cfg.device,
        "threads": cfg.threads,
        "runs_dir": cfg.runs_dir,
    }


def _train(
    cfg: PipelineConfig,
    train: RobustTrainConfig,
    path: Path,
    *,
    reporter: Reporter | None,
    log: Log,
) -> None:
    if is_finished(path):
        return
    log(
        f"training `{path.name}` ({train.attack.method}, {train.model.name}, {train.epochs} epoch(s))"
    )
    train_robust(train, run_path=path, reporter=reporter)


def split_settings(train: RobustTrainConfig) -> dict[str, Any]:
    """What fixes the training images a base holds out (as its summary's `data` records it)."""
    record = split_record(train.data, seed=train.seed, validation_images=0)
    return {"name": train.data.name, **{key: record[key] for key in SPLIT_KEYS}}


def check_same_holdout(cfg: PipelineConfig) -> None:
    """Both bases must hold out the same training images, the validation images every knob is
    chosen on: stop before any training otherwise."""
    std, rob = split_settings(cfg.standard), split_settings(cfg.robust)
    if std != rob or std["validation"] == 0:
        raise ConfigError(
            f"`standard` ({std}) and `robust` ({rob}) must hold out the same training images "
            "for validation: give both the same `data.name`, `seed`, `data.validation` (> 0), "
            "`data.train_subset` and `data.imbalance_factor`"
        )


def check_mixnet_stages(cfg: PipelineConfig) -> None:
    """The stages the mixing network reads must exist in both bases: checked on untrained
    copies before any training, not hours later when the adaptive mix is built."""
    if cfg.adaptive:
        bases = (cfg.standard.model, cfg.robust.model)
        counts = [len(create_model(m.name, num_classes=2, **m.kwargs).stages) for m in bases]
        check_stages(cfg.mixnet.stages, (counts[0], counts[1]))


def check_augmentations(cfg: PipelineConfig) -> None:
    """Every crop padding fits the images: checked before any training (the mixing network's
    loader is built hours in)."""
    for key, augment in (
        ("standard.data.augment", cfg.standard.data.augment),
        ("robust.data.augment", cfg.robust.data.augment),
        ("mixnet.augment", cfg.mixnet.augment),
    ):
        BatchAugment(augment, key=key).check_fits_data(cfg.robust.data)


def _split_current(train: RobustTrainConfig, summary: dict[str, Any]) -> bool:
    data = summary.get("data", {})
    return all(k in data and data[k] == v for k, v in split_settings(train).items())


def config_changes(path: Path, config: BaseModel, *, finished_too: bool = False) -> list[str]:
    """The keys in which the stage at `path` was begun with another config (none when it never
    began; none when it finished, unless `finished_too`): an unfinished one's checkpoints must
    not be continued under this one, and a finished one made with other settings is no
    longer what the config asks for."""
    run = RunDir(path)
    if (run.finished and not finished_too) or not run.config_path.is_file():
        return []
    return run.config_differences(config)


def _mix_current(cfg: PipelineConfig, kind: str, summary: dict[str, Any]) -> bool:
    settings = summary.get("settings", {})
    selection: dict[str, Any] = summary.get("selection") or {}
    current = bool(selection) and SweepSettings.recorded(settings.get("sweep")) == cfg.sweep
    current = current and (cfg.eval.eps is None or summary.get("eps") == cfg.eval.eps)
    if kind == "fixed":  # before the robust base became its reference it had another rule
        current = current and selection.get("rule") == admission_rule(cfg.sweep.tolerance)
    if kind == "adaptive":
        current = current and MixNetSettings.recorded(settings.get("mixnet")) == cfg.mixnet
    return current


def retire(work: Path, stages: tuple[str, ...] | list[str], *, why: str, log: Log) -> None:
    """Move finished or partial stages to work/retired/<time>/ so that they are redone."""
    present = [name for name in stages if (work / name).exists()]
    if not present:
        return
    target = work / "retired" / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    for name in present:
        shutil.move(str(work / name), str(target / name))
    log(f"redoing {', '.join(present)} ({why}); the old runs are in {target}")


def _retire_stale(cfg: PipelineConfig, work: Path, *, log: Log) -> None:
    """Retire stages that no longer match the config, and every stage built on them."""
    for name in BASES:
        train = cfg.standard if name == "standard" else cfg.robust
        path = work / name
        if is_finished(path) and not _split_current(train, read_finished(path)):
            retire(work, [name], why="trained without the configured validation hold-out", log=log)
        elif changed := config_changes(path, train, finished_too=True):
            # an unfinished one's checkpoints may even have trained on what are now validation
            # images; a finished one is not the base the config describes
            retire(work, [name], why=f"made with another config ({', '.join(changed)})", log=log)
        if not is_finished(path):  # (re)trained now: nothing built on the old one stays
            retire(work, ON_BASES, why=f"`{name}` is trained anew", log=log)
    for kind, stage in MIXES.items():
        path = work / stage
        if not is_finished(path) or _mix_current(cfg, kind, read_finished(path)):
            continue
        why = "its knobs were not chosen on these validation settings"
        adaptive = mix_config(cfg, work, "adaptive")
        if kind == "adaptive" and gate_choice_differences(path, adaptive) is not None:
            why += "; the mix keeps its trained network and chooses its gate again"
            retire(work, [f"eval-{stage}"], why=why, log=log)
        else:
            retire(work, [stage, f"eval-{stage}"], why=why, log=log)


def _stage(
    path: Path,
    make: Callable[[], Any],
    *,
    log: Log,
    title: str,
    config: BaseModel | None = None,
    current: Callable[[dict[str, Any]], bool] = lambda _: True,
    stale: str | None = None,
) -> dict[str, Any]:
    """Run `make` unless `path` finished with a summary that is still `current`; an unfinished
    stage begun with another `config` is retired first (its partial work is not continued).
    With `stale` (why a finished stage that is not `current` is out of date), such a stage is
    retired too and made afresh, for a command that continues no finished run."""
    if stale is not None and is_finished(path) and not current(read_finished(path)):
        retire(path.parent, [path.name], why=stale, log=log)
    if config is not None and (changed := config_changes(path, config)):
        retire(
            path.parent,
            [path.name],
            why=f"begun with another config ({', '.join(changed)})",
            log=log,
        )
    if not is_finished(path) or not current(read_finished(path)):
        log(title)
        make()
    return read_finished(path)


def run_pipeline(
    cfg: PipelineConfig, work: str | Path, *, reporter: Reporter | None = None, log: Log = print
) -> dict[str, Any]:
    """Run (or finish) every stage in `work`; returns and writes the report."""
    one_process_only()  # its mixes and evaluations would be repeated by every process
    check_same_holdout(cfg)
    check_mixnet_stages(cfg)
    check_augmentations(cfg)
    work = Path(work)
    refusal = f"another pipeline is working in `{work}`: wait for it to end, or give another"
    with held_alone(work, refusal=refusal + " work directory"):
        return _run_stages(cfg, work, reporter=reporter, log=log)


def mix_config(cfg: PipelineConfig, work: Path, kind: Literal["fixed", "adaptive"]) -> MixConfig:
    """The config of the pipeline's fixed or adaptive mix of the bases in `work`."""
    mix = MixConfig(
        name=MIXES[kind],
        kind=kind,
        **_common(cfg),
        standard=str(work / "standard"),
        robust=str(work / "robust"),
        eps=cfg.eval.eps,
        sweep=cfg.sweep,
    )
    return mix.model_copy(update={"mixnet": cfg.mixnet}) if kind == "adaptive" else mix


def _run_stages(
    cfg: PipelineConfig, work: Path, *, reporter: Reporter | None, log: Log
) -> dict[str, Any]:
    _retire_stale(cfg, work, log=log)
    std_dir, rob_dir = work / "standard", work / "robust"
    _train(cfg, cfg.standard, std_dir, reporter=reporter, log=log)
    _train(cfg, cfg.robust, rob_dir, reporter=reporter, log=log)
    fixed_cfg = mix_config(cfg, work, "fixed")
    fixed = _stage(
        work / "fixed-mix",
        lambda: run_mix(fixed_cfg, run_path=work / "fixed-mix", log=log),
        log=log,
        title="validation sweep of the fixed mix (alpha, s_g, s_h)",
        config=fixed_cfg,
    )
    models = {"standard": std_dir, "robust": rob_dir, "fixed mix": work / "fixed-mix"}
    if cfg.adaptive:
        adaptive_cfg = mix_config(cfg, work, "adaptive")
        _stage(
            work / "adaptive-mix",
            lambda: run_mix(
                adaptive_cfg, run_path=work / "adaptive-mix", reporter=reporter, log=log
            ),
            log=log,
            title="the mixing network (trained or resumed), then its gate on validation images",
            config=adaptive_cfg,
            current=lambda summary: _mix_current(cfg, "adaptive", summary),
        )
        models["adaptive mix"] = work / "adaptive-mix"
    test_split = recorded_dataset(data_of(rob_dir)).test_sha256
    evals = {
        label: _evaluate(cfg, label, path, work, test_split=test_split, log=log)
        for label, path in models.items()
    }
    report = pipeline_report(cfg, work, fixed=fixed, evals=evals)
    if cfg.smoothing is not None:
        report["certify"] = _certify(cfg, work, test_split=test_split, reporter=reporter, log=log)
    write_atomic((work / "report.json"), json.dumps(report, indent=2) + "\n")
    return report


def _evaluate(
    cfg: PipelineConfig, label: str, model: Path, work: Path, *, test_split: str, log: Log
) -> dict[str, Any]:
    path = work / f"eval-{label.replace(' ', '-')}"
    eval_cfg = EvalConfig(name=path.name, model=str(model), eval=cfg.eval, **_common(cfg))
    return _stage(
        path,
        lambda: run_eval(eval_cfg, run_path=path, log=lambda s: log(f"  {label}: {s}")),
        log=log,
        title=f"evaluating the {label} model",
        # other settings (a larger subset, another eps) re-run the evaluation, which keeps
        # every finished chunk its settings still match; test images in another order (an
        # older data cache) re-run it from the first chunk
        current=lambda summary: (
            summary.get("test_split_sha256") == test_split
            and not config_changes(path, eval_cfg, finished_too=True)
        ),
    )


def todays_lipschitz_constant(summary: dict[str, Any]) -> bool:
    """Whether a certification's Lipschitz bounds used the smoothed classifier's constant of
    today (before 2026-11-29 it was twice as large); the Lipschitz route takes the user's."""
    return (
        summary.get("method") != "smoothing"
        or summary.get("lipschitz_constant") == SMOOTHING_LIPSCHITZ
    )


def _certify(
    cfg: PipelineConfig, work: Path, *, test_split: str, reporter: Reporter | None, log: Log
) -> dict[str, Any]:
    assert cfg.smoothing is not None
    if changed := config_changes(work / "smoothing", cfg.smoothing, finished_too=True):
        why = f"made with another config ({', '.join(changed)})"
        retire(work, ["smoothing", "certify"], why=why, log=log)
    _train(cfg, cfg.smoothing, work / "smoothing", reporter=reporter, log=log)
    certify_cfg = CertifyConfig(
        name="certify",
        standard=str(work / "standard"),
        robust=str(work / "smoothing"),
        certify=cfg.certify,
        **_common(cfg),
    )
    summary = _stage(
        work / "certify",
        lambda: run_certify(certify_cfg, run_path=work / "certify", log=log),
        log=log,
        title="certifying the mix with a Gaussian-smoothing base",
        config=certify_cfg,
        current=lambda summary: (
            summary.get("test_split_sha256") == test_split
            and todays_lipschitz_constant(summary)
            and not config_changes(work / "certify", certify_cfg, finished_too=True)
        ),
        stale="it certified test images in another order, with other settings, or with the "
        "Lipschitz constant used before 2026-11-29 (twice the right one)",
    )
    keys = (
        "method",
        "sigma",
        "lipschitz_constant",
        "n",
        "grid",
        "curves",
        "mix_clean_acc",
        "attack_check",
        "wall_seconds",
    )
    smoothing = read_finished(work / "smoothing")
    return {
        **{k: summary[k] for k in keys if k in summary},
        "smoothing_clean_acc": smoothing["test"]["top1"],
        "plot": str(work / "certify" / "plots" / "certified.png"),
    }
