"""The whole method on one data set, stage by stage in one work directory, resumable.

work/standard, work/robust         `robust train` runs (standard and adversarial training)
work/fixed-mix                     `robust mix` alpha sweep and the chosen constant alpha
work/adaptive-mix                  `robust mix` with the mixing network (if `adaptive`)
work/eval-<model>                  `robust eval`: AutoAttack, masking checks, model card
work/smoothing, work/certify       Gaussian base and certification curves (if `smoothing`)
work/report.json                   every number above, and the paper's goal checked

A finished stage is never redone, and an evaluation keeps its finished chunks of images, so
an interrupted pipeline continues where it stopped. `robust demo` and benchmarks/robust.py
both run this.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trustvision.robust.certification import run_certify
from trustvision.robust.commands import describe, run_eval, run_mix
from trustvision.robust.config import (
    CertifyConfig,
    EvalConfig,
    MixConfig,
    PipelineConfig,
    RobustTrainConfig,
)
from trustvision.robust.plots import plot_tradeoff
from trustvision.robust.runs import is_finished, read_finished
from trustvision.robust.training import train_robust
from trustvision.train.loop import Reporter

Log = Callable[[str], None]
GOAL_AA_POINTS = 0.03  # the mix may lose at most 3 points of AutoAttack accuracy ...
GOAL_GAP_CLOSED = 0.5  # ... while closing at least half of the clean gap


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
    update = {"threads": cfg.threads} if cfg.threads is not None else {}
    log(
        f"training `{path.name}` ({train.attack.method}, {train.model.name}, {train.epochs} epoch(s))"
    )
    train_robust(train.model_copy(update=update), run_path=path, reporter=reporter)


def _stage(
    path: Path,
    make: Callable[[], Any],
    *,
    log: Log,
    title: str,
    current: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> dict[str, Any]:
    """Run `make` unless `path` finished with a summary that is still `current`."""
    if not is_finished(path) or not current(read_finished(path)):
        log(title)
        make()
    return read_finished(path)


def run_pipeline(
    cfg: PipelineConfig, work: str | Path, *, reporter: Reporter | None = None, log: Log = print
) -> dict[str, Any]:
    """Run (or finish) every stage in `work`; returns and writes the report."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    std_dir, rob_dir = work / "standard", work / "robust"
    _train(cfg, cfg.standard, std_dir, reporter=reporter, log=log)
    _train(cfg, cfg.robust, rob_dir, reporter=reporter, log=log)
    mix_common = {
        **_common(cfg),
        "standard": str(std_dir),
        "robust": str(rob_dir),
        "temperature_std": cfg.temperature_std,
        "temperature_rob": cfg.temperature_rob,
        "eps": cfg.eval.eps,
        "sweep": cfg.sweep,
        "mixnet": cfg.mixnet,
    }
    fixed = _stage(
        work / "fixed-mix",
        lambda: run_mix(
            MixConfig(name="fixed-mix", kind="fixed", **mix_common),
            run_path=work / "fixed-mix",
            log=log,
        ),
        log=log,
        title="alpha sweep of the fixed mix",
    )
    models = {"standard": std_dir, "robust": rob_dir, "fixed mix": work / "fixed-mix"}
    if cfg.adaptive:
        _stage(
            work / "adaptive-mix",
            lambda: run_mix(
                MixConfig(name="adaptive-mix", kind="adaptive", **mix_common),
                run_path=work / "adaptive-mix",
                reporter=reporter,
                log=log,
            ),
            log=log,
            title="training the mixing network",
        )
        models["adaptive mix"] = work / "adaptive-mix"
    evals = {label: _evaluate(cfg, label, path, work, log=log) for label, path in models.items()}
    report = _report(cfg, work, fixed=fixed, evals=evals)
    if cfg.smoothing is not None:
        report["certify"] = _certify(cfg, work, reporter=reporter, log=log)
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _evaluate(
    cfg: PipelineConfig, label: str, model: Path, work: Path, *, log: Log
) -> dict[str, Any]:
    path = work / f"eval-{label.replace(' ', '-')}"
    eval_cfg = EvalConfig(name=path.name, model=str(model), eval=cfg.eval, **_common(cfg))
    return _stage(
        path,
        lambda: run_eval(eval_cfg, run_path=path, log=lambda s: log(f"  {label}: {s}")),
        log=log,
        title=f"evaluating the {label} model",
        # a different subset size re-runs the evaluation, keeping every finished chunk
        current=lambda summary: summary["eval_subset"] == cfg.eval.subset,
    )


def _certify(
    cfg: PipelineConfig, work: Path, *, reporter: Reporter | None, log: Log
) -> dict[str, Any]:
    assert cfg.smoothing is not None
    _train(cfg, cfg.smoothing, work / "smoothing", reporter=reporter, log=log)
    certify_cfg = CertifyConfig(
        name="certify",
        standard=str(work / "standard"),
        robust=str(work / "smoothing"),
        temperature_std=cfg.temperature_std,
        certify=cfg.certify,
        **_common(cfg),
    )
    summary = _stage(
        work / "certify",
        lambda: run_certify(certify_cfg, run_path=work / "certify", log=log),
        log=log,
        title="certifying the mix with a Gaussian-smoothing base",
    )
    keys = (
        "method",
        "sigma",
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


def row(label: str, summary: dict[str, Any]) -> dict[str, Any]:
    """One line of the results table from an evaluation summary."""
    aa = summary["autoattack"]
    return {
        "model": label,
        "architecture": summary["architecture"],
        "clean_acc": summary["clean_acc"],
        "n_test": summary["n_test"],
        "autoattack_acc": aa["robust_acc"],
        "autoattack_ci95": aa["ci95"],
        "n_autoattack": aa["n"],
        "pgd_acc": summary["pgd"]["acc"],
        "acc_after": aa["acc_after"],
        "seconds": aa["seconds"],
        "total_seconds": aa["total_seconds"],
        "images_per_s": aa["images_per_s"],
        "checks": summary["checks"],
        "masking_suspected": summary["masking_suspected"],
        "autoattack_flags": summary["autoattack_flags"],
        "eps_sweep": summary["eps_sweep"],
        "version": summary["version"],
    }


def goal(rows: dict[str, dict[str, Any]], mix: str) -> dict[str, Any] | None:
    """The paper's goal for `mix`: AutoAttack within 3 points of the robust base while closing
    at least half of the clean gap between the robust and the standard base."""
    if mix not in rows:
        return None
    std, rob, m = rows["standard"], rows["robust"], rows[mix]
    gap = std["clean_acc"] - rob["clean_acc"]
    closed = (m["clean_acc"] - rob["clean_acc"]) / gap if gap > 0 else math.nan
    aa_loss = rob["autoattack_acc"] - m["autoattack_acc"]
    return {
        "clean_gap": gap,
        "gap_closed": closed,
        "autoattack_loss": aa_loss,
        "met": bool(aa_loss <= GOAL_AA_POINTS and closed >= GOAL_GAP_CLOSED),
    }


def _report(
    cfg: PipelineConfig, work: Path, *, fixed: dict[str, Any], evals: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    rows = {label: row(label, summary) for label, summary in evals.items()}
    others = [
        {
            "label": f"{label} (AutoAttack, {r['n_autoattack']} images)",
            "clean_acc": r["clean_acc"],
            "robust_acc": r["autoattack_acc"],
        }
        for label, r in rows.items()
    ]
    plot = plot_tradeoff(
        fixed["sweep"],
        work / "tradeoff.png",
        title=f"{fixed['data']['name']}: clean vs robust accuracy",
        attack=f"sweep: {fixed['sweep_attack']}",
        others=others,
    )
    trained = {label: _training_record(work / label) for label in ("standard", "robust")}
    adaptive = work / "adaptive-mix"
    return {
        "data": fixed["data"],
        "eps": fixed["eps"],
        "sweep": fixed["sweep"],
        "sweep_attack": fixed["sweep_attack"],
        "alpha": fixed["alpha"],
        "adaptive": _adaptive_record(adaptive) if is_finished(adaptive) else None,
        "training": trained,
        "rows": list(rows.values()),
        "goal": {m: goal(rows, m) for m in ("fixed mix", "adaptive mix") if m in rows},
        "tradeoff_plot": str(plot),
        "config": cfg.model_dump(mode="json"),
    }


def _training_record(path: Path) -> dict[str, Any]:
    summary = read_finished(path)
    return {
        **describe(path),
        "epochs": summary["epochs"],
        "attack": summary["attack"],
        "train_images": summary["data"]["train_images"],
        "wall_seconds": summary["wall_seconds"],
        "test_acc": summary["test"]["top1"],
    }


def _adaptive_record(path: Path) -> dict[str, Any]:
    summary = read_finished(path)
    keys = ("gamma_bias", "bias_sweep", "bias_reference_robust_acc", "train_seconds", "history")
    return {k: summary[k] for k in keys if k in summary}


def reset_stage(work: str | Path, stage: str) -> None:
    """Delete one stage of a work directory so the next run redoes it."""
    shutil.rmtree(Path(work) / stage, ignore_errors=True)
