"""The report of benchmarks/compact.py: docs/results/compact.md, one function per section,
and the accuracy-against-parameters plot. Every number comes from compact.py's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROWS = {
    "plain": "plain (same epochs, same augmentation)",
    "no_unfreeze": "dual + unify, all groups from the start",
    "full": "dual + unify + progressive unfreezing (deployed)",
}


def pm(stats: dict[str, float], digits: int = 2) -> str:
    """`mean ± std` in percent points."""
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def markdown(table: dict[str, Any], latency: dict[str, Any], meta: dict[str, Any]) -> str:
    """The report for people: every number comes from `table`, `latency` and `meta`."""
    lines = [
        *header_lines(meta),
        *paper_lines(table),
        *ablation_lines(table),
        "",
        *verdicts(table),
        "",
        *deployment_lines(table),
        *latency_lines(latency),
        "",
        "![accuracy against parameters](compact_accuracy_vs_params.png)",
        "",
    ]
    return "\n".join(lines)


def header_lines(meta: dict[str, Any]) -> list[str]:
    """The title and how the numbers were made."""
    return [
        "# Lightweight CNNs: dual-input-output training and progressive unfreezing",
        "",
        f"Written by `benchmarks/compact.py` on {meta['machine']} (training: 1 torch thread "
        f"per process, {meta['jobs']} process(es) at a time), "
        f"{meta['date']}. Test top-1 in %, mean ± sample std over seeds {meta['seeds']}; "
        f"epochs scale {meta['epochs_scale']:g}. Reading of the paper and every choice: "
        "[docs/compact.md](../compact.md).",
        "",
    ]


def paper_lines(table: dict[str, Any]) -> list[str]:
    """The deployed model of each data set beside the paper's claim and our goal."""
    lines = [
        "## Against the paper",
        "",
        "| data set | paper top-1 (params) | our goal | ours: deployed model | params | MACs | int8 top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, t in table.items():
        full = t["rows"].get("full") or next(iter(t["rows"].values()))
        lines.append(
            f"| {dataset}{' (JPEG copy)' if t['variant'] == 'jpeg' else ''} "
            f"| {t['paper']['top1']:.0f} ({t['paper']['params']}) | {t['paper']['goal']:.1f} "
            f"| {pm(full['top1'])} | {t['parameters']:,} | {t['macs']:,} "
            f"| {pm(t['int8']['onnx_int8_top1'])} |"
        )
    return lines


def ablation_lines(table: dict[str, Any]) -> list[str]:
    """Every row of the ablation, the unification variants and stage 1's branches."""
    lines = [
        "",
        "## Ablation: what each stage buys",
        "",
        "Same deployed architecture and parameter count in every row, same total epochs, same",
        "augmentation transform. In stage 1 the original branch sees original images and the",
        "augmented branch only augmented copies; the plain row and stage 2 replace each image",
        "by its augmented copy with the probability given here per data set:",
        "",
        *[
            f"- {d}: plain {t['augment_prob']['plain']:g}, stage 2 {t['augment_prob']['stage2']:g}"
            for d, t in table.items()
        ],
        "",
        "'images' counts images through a model per seed: stage 1 trains two branches, so the",
        "dual rows process more images than the plain row in the same epochs.",
        "",
        "| data set | row | top-1 | epochs | images | train wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, t in table.items():
        for name, row in t["rows"].items():
            lines.append(
                f"| {dataset} | {ROWS[name]} | {pm(row['top1'])} | {row['epochs']} "
                f"| {row['image_passes']:,} | {row['wall_seconds']['mean']:.0f} |"
            )
        for mode, stats in t.get("unify_variants", {}).items():
            lines.append(
                f"| {dataset} | full, but unify = {mode} (default: {t['unify']}) "
                f"| {pm(stats)} | {t['rows']['full']['epochs']} | {t['rows']['full']['image_passes']:,} | - |"
            )
        for name, stats in t["stage1"].items():
            lines.append(
                f"| {dataset} | stage 1 only: {name.replace('_', ' ')} (its own head) "
                f"| {pm(stats)} | {t['dual_epochs']} | - | - |"
            )
    return lines


def verdicts(table: dict[str, Any]) -> list[str]:
    """One plain sentence per data set: what stage 1 and progressive unfreezing bought."""
    lines = []
    for dataset, t in table.items():
        rows = t["rows"]
        if not {"plain", "no_unfreeze", "full"} <= set(rows):
            continue
        plain, flat, full = (rows[k]["top1"] for k in ("plain", "no_unfreeze", "full"))
        lines.append(
            f"- {dataset}: dual + unify vs plain {difference(flat, plain)}; "
            f"progressive unfreezing vs all groups at once {difference(full, flat)}; "
            f"full method vs plain {difference(full, plain)}."
        )
    return lines


def difference(a: dict[str, float], b: dict[str, float]) -> str:
    """A difference of means in points, called a gain only when it exceeds both spreads."""
    delta = a["mean"] - b["mean"]
    noise = max(a["std"], b["std"])
    word = (
        "within seed spread (buys nothing measurable)"
        if abs(delta) <= noise
        else ("gain" if delta > 0 else "loss")
    )
    return f"{delta:+.2f} points ({word})"


def deployment_lines(table: dict[str, Any]) -> list[str]:
    """ONNX fp32 and int8 accuracy, their agreement with PyTorch, and the file sizes."""
    lines = [
        "## Deployment: ONNX, int8, size",
        "",
        "Exported model input: float32 pixels in [0, 1] (uint8 / 255), (N, C, H, W); the",
        "normalisation is inside the model. int8: onnxruntime static quantization, QDQ, uint8",
        "activations, int8 per-channel weights, calibrated on 1,024 training images.",
        "",
        "| data set | ONNX fp32 top-1 | int8 top-1 | int8 drop (points) | max abs logit diff fp32 | same predictions fp32 | checks | safetensors B | ONNX fp32 B | ONNX int8 B |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, t in table.items():
        q, b = t["int8"], t["bytes"]
        lines.append(
            f"| {dataset} | {pm(q['onnx_fp32_top1'])} | {pm(q['onnx_int8_top1'])} "
            f"| {pm(q['drop_points'])} | {q['max_abs_diff']:.1e} | {100 * q['min_agreement']:.2f}% "
            f"| {'all passed' if q['all_checks_passed'] else 'FAILED'} "
            f"| {b['safetensors']:,} | {b['onnx_fp32']:,} | {b['onnx_int8']:,} |"
        )
    return lines


def latency_lines(latency: dict[str, Any]) -> list[str]:
    """The latency table of each data set's first-seed model."""
    lines = [
        "",
        "## Latency (after warm-up)",
        "",
        "Batch-1 latency percentiles over single-image calls and throughput at batch 256, per",
        "engine and intra-op thread count; the PyTorch model includes the same normalisation.",
        "The 1-minute load average as each data set's timing began is given: it averages the",
        "minute before (the benchmark's own training included), not the seconds timed.",
        "",
        "| data set | engine | threads | p50 (ms) | p99 (ms) | images/s at batch 256 | load avg |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, result in latency.items():
        for row in result["latency"]:
            lines.append(
                f"| {dataset} | {row['engine']} | {row['threads']} | {row['p50_ms']:.3f} "
                f"| {row['p99_ms']:.3f} | {row['throughput']:,.0f} "
                f"| {result['load_average_1min']:.1f} |"
            )
    return lines


def plot(table: dict[str, Any], path: Path) -> None:
    """Accuracy against parameter count: our rows (mean ± std) beside the paper's claims.

    Our rows share one architecture, hence one parameter count: they are drawn a few pixels
    apart at that exact count, not at made-up counts.
    """
    from matplotlib.transforms import offset_copy

    from trustvision.report.figures import plt, save_figure

    fig, axes = plt.subplots(1, len(table), figsize=(4.5 * len(table), 4.6), squeeze=False)
    markers = {"plain": "o", "no_unfreeze": "s", "full": "D"}
    for ax, (dataset, t) in zip(axes[0], table.items(), strict=True):
        for offset, (name, row) in enumerate(t["rows"].items()):
            shift = offset_copy(ax.transData, fig=fig, x=8 * (offset - 1), y=0, units="points")
            ax.errorbar(
                t["parameters"],
                row["top1"]["mean"],
                yerr=row["top1"]["std"],
                fmt=markers.get(name, "o"),
                label=ROWS[name],
                capsize=3,
                transform=shift,
            )
        paper_x = 14_862 if dataset != "cifar10" else 20_000
        ax.plot(paper_x, t["paper"]["top1"], "k*", markersize=12, label="paper (claimed)")
        ax.axhline(t["paper"]["goal"], color="gray", linestyle="--", label="our goal")
        # Limits by hand: autoscaling ignores the shifted artists.
        values = [t["paper"]["top1"], t["paper"]["goal"]] + [
            r["top1"]["mean"] + sign * r["top1"]["std"]
            for r in t["rows"].values()
            for sign in (-1, 1)
        ]
        pad = 0.15 * (max(values) - min(values))
        xs = (t["parameters"], paper_x)
        ax.set(
            title=dataset,
            xlabel="parameters",
            ylabel="test top-1 (%)",
            xlim=(0.95 * min(xs), 1.05 * max(xs)),
            ylim=(min(values) - pad, max(values) + pad),
        )
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    save_figure(fig, path, rect=(0, 0.1, 1, 1))
