"""Plots of a federated run: accuracy per round, and per-class accuracy against class frequency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustvision.federated.algorithm import reported_modes
from trustvision.report.figures import plt, save_figure
from trustvision.runs import RunDir


def curves() -> dict[str, tuple[str, str]]:
    """Test curve -> its label and its validation twin (drawn dashed in the same colour):
    generic, every algorithm's further global predictors (`modes`), local masked and not."""
    modes = {f"{name}_acc": (label, f"{name}_val_acc") for name, label in reported_modes().items()}
    return {
        "generic_acc": ("generic", "generic_val_acc"),
        **modes,
        "local_acc_masked": ("local, unseen masked", "local_val_acc_masked"),
        "local_acc_unmasked": ("local, unmasked", "local_val_acc_unmasked"),
    }


def plot_rounds(history: list[dict], path: Path) -> Path:
    """Generic and local accuracy against round (evaluated rounds only): test solid,
    validation dashed; the rounds validation selects are what the summary reports."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (key, (label, val_key)) in enumerate(curves().items()):
        for k, style, suffix in ((key, "o-", "test"), (val_key, "--", "val")):
            rows = [r for r in history if _finite(r.get(k))]
            if rows:
                ax.plot(
                    [r["round"] for r in rows],
                    [100 * r[k] for r in rows],
                    style,
                    ms=3,
                    color=f"C{i}",
                    label=f"{label} ({suffix})",
                )
    ax.set(xlabel="round", ylabel="top-1 accuracy (%)", title="accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_methods_per_round(histories: dict[str, list[dict]], path: Path) -> Path:
    """Generic and local (masked) accuracy against round, one line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for i, (label, history) in enumerate(histories.items()):
        for ax, key in zip(axes, ("generic_acc", "local_acc_masked"), strict=True):
            rows = [r for r in history if _finite(r.get(key))]
            if rows:  # one colour per method in both panels, with or without a generic model
                ax.plot(
                    [r["round"] for r in rows],
                    [100 * r[key] for r in rows],
                    "o-",
                    ms=2,
                    color=f"C{i % 10}",
                    label=label,
                )
    for ax, title in zip(axes, ("generic", "local (unseen classes masked)"), strict=True):
        ax.set(xlabel="round", ylabel="top-1 accuracy (%)", title=f"{title} accuracy")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2)
    return save_figure(fig, path)


def plot_class_frequency(
    series: dict[str, Sequence[float]],
    *,
    counts: Sequence[int],
    classes: Sequence[str],
    path: Path,
) -> Path:
    """Per-class accuracy of each series, classes ordered by training frequency (counts on top)."""
    order = sorted(range(len(counts)), key=lambda c: -counts[c])
    fig, ax = plt.subplots(figsize=(max(7, 0.5 * len(order)), 4.5))
    width = 0.8 / max(len(series), 1)
    for i, (label, per_class) in enumerate(series.items()):
        values = [100 * per_class[c] if _finite(per_class[c]) else 0.0 for c in order]
        ax.bar(
            [x + (i - (len(series) - 1) / 2) * width for x in range(len(order))],
            values,
            width,
            label=label,
        )
    labels = [f"{classes[c]}\n({counts[c]})" for c in order]
    ax.set_xticks(range(len(order)), labels, rotation=90 if len(order) > 20 else 45, fontsize=8)
    ax.set(
        ylabel="test accuracy (%)",
        ylim=(0, 100),
        title="per-class accuracy, most frequent class first",
    )
    freq = ax.twinx()
    freq.plot(
        range(len(order)), [max(counts[c], 1) for c in order], "k.--", label="training images"
    )
    freq.set(yscale="log", ylabel="training images (log)")
    handles = ax.get_legend_handles_labels()
    extra = freq.get_legend_handles_labels()
    ax.legend(
        handles[0] + extra[0],
        handles[1] + extra[1],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.3),
        ncol=3,
        fontsize=8,
    )
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_federated_run(
    run: RunDir, *, classes: Sequence[str], summary: dict[str, Any]
) -> list[Path]:
    """Every standard plot of a federated run, from its metrics and the `summary` it is about
    to write (plots come first, so the summary is the last file a finished run gets)."""
    made = []
    history = run.read_metrics()
    if history:
        made.append(plot_rounds(history, run.plots_dir / "accuracy_per_round.png"))
    final, counts = summary.get("final", {}), summary.get("data", {}).get("train_counts")
    series = {k: v["per_class"] for k, v in final.get("generic", {}).items()}
    local = final.get("local", {}).get("masked", {})
    if "per_class" in local:
        series["local (masked)"] = local["per_class"]
    if series and counts:
        made.append(
            plot_class_frequency(
                series,
                counts=counts,
                classes=classes,
                path=run.plots_dir / "per_class_vs_frequency.png",
            )
        )
    return made


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
