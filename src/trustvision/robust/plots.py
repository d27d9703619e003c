"""Plots of the robust system (PNG, headless): the trade-off curve and certified accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustvision.report.figures import plt, save_figure


def _curves(points: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The sweep's points as one alpha curve per (s_g, s_h); a point whose temperature is
    unused (None: alpha 0 or 1) belongs to every curve it matches."""
    combos = dict.fromkeys(
        (p.get("temperature_std"), p.get("temperature_rob"))
        for p in points
        if p.get("temperature_std") is not None and p.get("temperature_rob") is not None
    )
    if not combos:  # only alphas 0 and 1 (or an old sweep without temperatures)
        return {"": sorted(points, key=lambda p: p["alpha"])}
    curves = {}
    for s_g, s_h in combos:
        members = [
            p
            for p in points
            if p.get("temperature_std") in (None, s_g) and p.get("temperature_rob") in (None, s_h)
        ]
        label = "" if len(combos) == 1 else f"s_g {s_g:g}, s_h {s_h:g}"
        curves[label] = sorted(members, key=lambda p: p["alpha"])
    return curves


def _final_panel(ax: Any, final: Sequence[dict[str, Any]]) -> None:
    """Each model's final test numbers under AutoAttack, one marker each."""
    for marker, model in zip("os^DvP" * 2, final, strict=False):
        ax.plot(
            100 * model["robust_acc"],
            100 * model["clean_acc"],
            marker,
            markersize=9,
            label=model["label"],
        )
    ax.set(
        xlabel="AutoAttack accuracy (%)",
        ylabel="clean accuracy (%)",
        title="test images: the final numbers",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _scatter(ax: Any, points: Sequence[dict[str, Any]], marker: str, **style: Any) -> None:
    """Sweep points as markers at (robust, clean) accuracy in %, if there are any."""
    if points:
        xs = [100 * p["robust_acc"] for p in points]
        ax.plot(xs, [100 * p["clean_acc"] for p in points], marker, **style)


def _fixed_curves(ax: Any, points: Sequence[dict[str, Any]]) -> None:
    """The fixed mix's curves on `ax`, one per pair of temperatures; the alphas written beside
    the curve of the default temperatures (its label is empty)."""
    for label, curve in _curves(points).items():
        xs = [100 * p["robust_acc"] for p in curve]
        ys = [100 * p["clean_acc"] for p in curve]
        ax.plot(xs, ys, "o-", label=f"fixed mix {label}".strip(), alpha=0.8)
        if not label:
            for p, x, y in zip(curve, xs, ys, strict=True):
                ax.annotate(
                    f"{p['alpha']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
                )


def plot_tradeoff(
    points: Sequence[dict[str, Any]],
    path: Path,
    *,
    title: str,
    attack: str,
    chosen: dict[str, Any] | None = None,
    adaptive: Sequence[dict[str, Any]] = (),
    adaptive_chosen: dict[str, Any] | None = None,
    final: Sequence[dict[str, Any]] = (),
) -> Path:
    """Clean against attacked accuracy. Left, the validation sweep the knobs were chosen on:
    the fixed mix at every fully attacked alpha (one curve per pair of temperatures), the
    chosen point starred, and the adaptive mix's fully attacked gate points (the chosen one a
    red star); a point whose
    attacks stopped early (`robust_complete` False: its robust accuracy is an upper bound) is a
    grey ring, on no curve. Points the lazy sweep never attacked are left out. Right, when
    `final` is given, each model's final test numbers, {"label", "clean_acc", "robust_acc"}
    under AutoAttack: other images and another attack, so the panels never share axes.
    """
    attacked = [p for p in [*points, *adaptive] if p["robust_acc"] is not None]
    bounds = [p for p in attacked if p.get("robust_complete") is False]
    points = [p for p in points if p in attacked and p not in bounds]
    adaptive = [p for p in adaptive if p in attacked and p not in bounds]
    panels = 2 if final else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    _fixed_curves(ax, points)
    _scatter(ax, adaptive, "x", color="black", markersize=7, label="adaptive mix (gate, s_g, s_h)")
    _scatter(
        ax,
        bounds,
        "o",
        markerfacecolor="none",
        markeredgecolor="grey",
        markersize=11,
        label="upper bound (attacks stopped early)",
    )
    if chosen is not None:
        label = f"chosen fixed mix: alpha {chosen['alpha']:g}"
        _scatter(ax, [chosen], "*", color="black", markersize=13, label=label)
    if adaptive_chosen is not None and adaptive_chosen.get("robust_acc") is not None:
        label = "chosen adaptive mix"
        _scatter(ax, [adaptive_chosen], "*", color="tab:red", markersize=13, label=label)
    ax.set(
        xlabel=f"robust accuracy (%)\n{attack}",
        ylabel="clean accuracy (%)",
        title=f"{title}\nvalidation images: how the knobs were chosen",
    )
    ax.xaxis.label.set_fontsize(8)  # the attack's description is long
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if final:
        _final_panel(axes[0][1], final)
    return save_figure(fig, path)


def plot_certified(
    curves: dict[str, dict[str, list[float]]],
    grid: Sequence[float],
    path: Path,
    *,
    title: str,
    lipschitz_grid: Sequence[float] | None = None,
) -> Path:
    """Certified accuracy against l2 radius: one colour per alpha, solid tight, dashed Lipschitz.

    `curves[alpha_label] = {"tight": [...], "lipschitz": [...]}` over `grid` (the Lipschitz
    curves over `lipschitz_grid` where given).
    """
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (label, curve) in zip(colours * 3, curves.items(), strict=False):
        ax.plot(grid, [100 * v for v in curve["tight"]], "-", color=colour, label=f"alpha {label}")
        if "lipschitz" in curve:
            radii = grid if lipschitz_grid is None else lipschitz_grid
            ax.plot(radii, [100 * v for v in curve["lipschitz"]], "--", color=colour, alpha=0.7)
    ax.set(xlabel="l2 radius", ylabel="certified accuracy (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="solid: smoothing bound\ndashed: Lipschitz bound", title_fontsize=7)
    return save_figure(fig, path)


def plot_gate(history: Sequence[dict[str, Any]], path: Path, *, title: str) -> Path:
    """The gate's mean alpha per epoch on clean and on attacked images: in training mode (the
    training batches) and in evaluation mode (validation images, clean and under PGD). A gate
    that stops telling the two apart shows as the curves meeting."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in history]
    for key, style, label in (
        ("train_alpha_attacked", "o--", "training mode, attacked"),
        ("train_alpha_clean", "s--", "training mode, clean"),
        ("val_alpha_attacked", "o-", "evaluation mode, attacked (validation)"),
        ("val_alpha_adaptive", "^-", "evaluation mode, adaptive attack (validation)"),
        ("val_alpha_clean", "s-", "evaluation mode, clean (validation)"),
    ):
        points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set(xlabel="epoch", ylabel="mean alpha (weight of the robust base)", title=title)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
