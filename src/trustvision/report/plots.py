"""Plots of a run directory: learning curves and per-class accuracy (PNG, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from trustvision.report.figures import plt, save_figure
from trustvision.runs import RunDir


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy against epoch, train and test side by side."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in history], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def plot_per_class(
    per_class: Sequence[float],
    class_names: Sequence[str],
    path: Path,
    *,
    counts: Sequence[int] | None = None,
) -> Path:
    """Test accuracy of each class; with training counts, classes are ordered by frequency."""
    order = list(range(len(per_class)))
    if counts is not None:
        order.sort(key=lambda c: -counts[c])
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(order)), 4))
    values = [100 * per_class[c] if per_class[c] == per_class[c] else 0.0 for c in order]
    ax.bar(range(len(order)), values, color="tab:blue")
    labels = [
        class_names[c] if counts is None else f"{class_names[c]}\n({counts[c]})" for c in order
    ]
    ax.set_xticks(range(len(order)), labels, rotation=90 if len(order) > 20 else 45, fontsize=8)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), title="per-class accuracy")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_run(run: RunDir, *, class_names: Sequence[str], summary: dict[str, Any]) -> list[Path]:
    """Every standard plot of a centralised run, from its metrics and the `summary` it is
    about to write (plots come first, so the summary is the last file a finished run gets)."""
    made = []
    history = run.read_metrics()
    if history:
        made.append(plot_curves(history, run.plots_dir / "curves.png"))
    test = summary.get("test") or {}  # None: the run had no test loader
    if "per_class" in test:
        counts = summary.get("data", {}).get("train_class_counts")
        path = run.plots_dir / "per_class.png"
        made.append(plot_per_class(test["per_class"], class_names, path, counts=counts))
    return made
