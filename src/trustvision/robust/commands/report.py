"""The report of `robust demo` and benchmarks/robust.py: one row per model (clean and
AutoAttack accuracy, masking checks), the paper's goal checked, and how each stage was built."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trustvision.robust.commands.common import attack_label, describe
from trustvision.robust.config import PipelineConfig
from trustvision.robust.plots import plot_tradeoff
from trustvision.robust.runs import is_finished, read_finished
from trustvision.robust.sweep import ADAPTIVE_KNOBS

GOAL_AA_POINTS = 0.03  # the mix may lose at most 3 points of AutoAttack accuracy ...
GOAL_GAP_CLOSED = 0.5  # ... while closing at least half of the clean gap
BASES = ("standard", "robust")


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
        "attacked_per_class": summary.get("attacked_per_class"),  # absent before 2026-11-28
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
        "gate": summary.get("gate"),
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


def pipeline_report(
    cfg: PipelineConfig, work: Path, *, fixed: dict[str, Any], evals: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    rows = {label: row(label, summary) for label, summary in evals.items()}
    final = [
        {
            "label": f"{label} ({r['n_autoattack']} images)",
            "clean_acc": r["clean_acc"],
            "robust_acc": r["autoattack_acc"],
        }
        for label, r in rows.items()
    ]
    trained = {label: _training_record(work / label) for label in BASES}
    adaptive_dir = work / "adaptive-mix"
    # with `adaptive: false` an adaptive mix left from an earlier run is not this run's
    made = cfg.adaptive and is_finished(adaptive_dir)
    adaptive = _adaptive_record(adaptive_dir) if made else None
    # (the stage is current, so its attack is the config's; labelled as this version labels it)
    attack = attack_label(cfg.sweep, fixed["selection"]["validation_images"]["images_attacked"])
    plot = plot_tradeoff(
        fixed["sweep"],
        work / "tradeoff.png",
        title=f"{fixed['data']['name']}: clean vs robust accuracy",
        attack=attack,
        chosen=fixed["chosen"],
        adaptive=(adaptive or {}).get("bias_sweep", []),
        adaptive_chosen=(adaptive or {}).get("chosen"),
        final=final,
    )
    selection = {"fixed mix": fixed["selection"]}
    if adaptive is not None:
        selection["adaptive mix"] = adaptive["selection"]
    return {
        "data": fixed["data"],
        "eps": fixed["eps"],
        "sweep": fixed["sweep"],
        "sweep_attack": attack,
        "alpha": fixed["alpha"],
        "temperature_std": fixed["temperature_std"],
        "temperature_rob": fixed["temperature_rob"],
        "selection": selection,
        "adaptive": adaptive,
        "training": trained,
        "rows": list(rows.values()),
        "goal": {m: goal(rows, m) for m in ("fixed mix", "adaptive mix") if m in rows},
        "tradeoff_plot": str(plot),
        "config": cfg.model_dump(mode="json"),
    }


def _training_record(path: Path) -> dict[str, Any]:
    summary = read_finished(path)
    data = summary["data"]
    validation = summary.get("validation") or {}
    return {
        **describe(path),
        "epochs": summary["epochs"],
        "attack": summary["attack"],
        "train_images": data["train_images"],
        "validation_images": data.get("validation_images"),
        "validation": data.get("validation"),
        "validation_acc": validation.get("top1"),
        "wall_seconds": summary["wall_seconds"],
        "test_acc": summary["test"]["top1"],
    }


def _adaptive_record(path: Path) -> dict[str, Any]:
    summary = read_finished(path)
    keys = (
        *ADAPTIVE_KNOBS,
        "bias_sweep",
        "bias_reference_robust_acc",
        "chosen",
        "selection",
        "mixnet_train_images",
        "train_seconds",
        "history",
    )
    return {k: summary[k] for k in keys if k in summary}
