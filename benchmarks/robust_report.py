"""The report of benchmarks/robust.py: docs/results/robust.md, one function per table or
section, built from the pipeline's report.json of each data set (the mixes' sweeps and gate:
robust_report_mixes.py)."""

from __future__ import annotations

import time
from typing import Any

from common import pct
from robust_report_mixes import adaptive_lines, sweep_table


def intro_lines(
    command: str, env: dict[str, Any], threads: int, seconds: float | None
) -> list[str]:
    """The title, the invocation and the protocol; `seconds` is None for --report-only."""
    return [
        "# Adaptive smoothing: clean vs AutoAttack accuracy",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')}; machine: {env['machine']}, "
        f"torch {env['torch']}, {threads} thread(s) (other jobs shared the 2 cores). "
        + (
            "Tables rebuilt from the reports of earlier runs (wall time per stage below)."
            if seconds is None
            else f"This invocation took {seconds / 60:.0f} min (finished stages of earlier runs were reused)."
        ),
        "",
        "Every knob (the fixed mix's alpha, s_g, s_h; the adaptive mix's gamma bias, s_g, s_h) "
        "was chosen on validation images: training images both bases held out and neither they "
        "nor the mixing network trained on (`selected_by` in robust.json, with the grid and its "
        "validation numbers). Test images give the final numbers only: clean accuracy on the full "
        "test set; AutoAttack accuracy (l_inf, per-point worst case) on "
        "the first n test images, the same images for every model, with a Clopper-Pearson 95% "
        "interval. `standard` AutoAttack = APGD-CE, APGD-T (9 targets), FAB-T, Square (5000 "
        "queries), 100 iterations each (pyautoattack 0.2.0); the adaptive mix additionally faces "
        "APGD-CE and APGD-T whose loss adds w BCE(gamma, 1) (w = 0.3), gradients through the "
        "mixing network. **Scale**: see n in each table; the goal (adaptive mix within 3 points "
        "of the robust model's AutoAttack accuracy while closing half the clean gap) is only "
        "claimed where it says met, at that n.",
        "",
    ]


def missing_lines(missing: list[str]) -> list[str]:
    """The data sets without a report yet, and the command that makes them."""
    if not missing:
        return []
    return [
        "## Not measured",
        "",
        f"No report under the validation protocol yet for: {', '.join(missing)} "
        "(configs in configs/robust/; run "
        f"`python benchmarks/robust.py --datasets {' '.join(missing)}`).",
        "",
    ]


def model_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| model | architecture | clean acc (%) | AutoAttack acc (%) [95% CI] | n | PGD-20 acc (%) | "
        "seconds per attack | AutoAttack images/s | masking checks |",
        "|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in report["rows"]:
        low, high = r["autoattack_ci95"]
        seconds = ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items())
        checks = "; ".join(
            f"{c['name']} {'pass' if c['passed'] else 'FAIL' if c['passed'] is False else 'not run'}"
            for c in r["checks"]
        )
        lines.append(
            f"| {r['model']} | {r['architecture']} | {pct(r['clean_acc'])} (n={r['n_test']}) | "
            f"{pct(r['autoattack_acc'], 1)} [{pct(low, 1)}, {pct(high, 1)}] | {r['n_autoattack']} | "
            f"{pct(r['pgd_acc'], 1)} | {seconds} | {r['images_per_s']:.3f} | {checks} |"
        )
    counts = next(
        (r["attacked_per_class"] for r in report["rows"] if r.get("attacked_per_class")), None
    )
    if counts:
        lines += [
            "",
            f"The {sum(counts)} attacked test images hold {min(counts)} to {max(counts)} images "
            f"of each of the {len(counts)} classes.",
        ]
    return lines


def goal_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for mix, g in report["goal"].items():
        if g is None:
            continue
        verdict = "**met**" if g["met"] else "**not met**"
        lines.append(
            f"- {mix}: closes {pct(g['gap_closed'], 0)}% of the clean gap of "
            f"{pct(g['clean_gap'])} points (goal >= 50%), loses {pct(g['autoattack_loss'], 1)} "
            f"points of AutoAttack accuracy (goal <= 3): {verdict}."
        )
    return lines


def lipschitz_curves(cert: dict[str, Any]) -> tuple[list[float], dict[str, list[float]]]:
    """The radii and, per alpha, the certified accuracy of the Lipschitz bound. A certification
    written before 2026-11-29 (no `lipschitz_constant`) used twice the smoothed classifier's
    Lipschitz constant; a Lipschitz radius is proportional to 1/L, so the right curve at radius
    2r is the recorded one at r: known at every other point of the grid (which starts at 0
    and is evenly spaced), and given there."""
    curves = {alpha: curve["lipschitz"] for alpha, curve in cert["curves"].items()}
    grid = cert["grid"]
    if "lipschitz_constant" in cert:
        return grid, curves
    half = range((len(grid) + 1) // 2)
    return [grid[2 * j] for j in half], {a: [c[j] for j in half] for a, c in curves.items()}


def certify_lines(report: dict[str, Any], plot: str | None) -> list[str]:
    cert = report.get("certify")
    if not cert:
        return []
    grid = cert["grid"]
    picks = sorted({round(k * (len(grid) - 1) / 5) for k in range(6)})  # six radii, evenly spaced
    header = " | ".join(f"r={grid[i]:.2f}" for i in picks)
    lipschitz_grid, lipschitz = lipschitz_curves(cert)
    at = {r: i for i, r in enumerate(lipschitz_grid)}
    lines = [
        f"Gaussian-noise base (sigma {cert['sigma']}, clean acc {pct(cert['smoothing_clean_acc'])}%), "
        f"{cert['n']} test images, Monte Carlo n={report['config']['certify']['n']} "
        f"(confidence {1 - report['config']['certify']['confidence']:.3f}). Certified accuracy (%), "
        "smoothing bound (Lipschitz bound in brackets):",
        "",
        f"| alpha | clean acc of the mix (%) | {header} |",
        "|---:|---:|" + "---:|" * len(picks),
    ]
    for alpha, curve in cert["curves"].items():

        def bound(i: int, alpha: str = alpha) -> str:
            j = at.get(grid[i])
            return "n/a" if j is None else pct(lipschitz[alpha][j], 1)

        cells = " | ".join(f"{pct(curve['tight'][i], 1)} ({bound(i)})" for i in picks)
        lines.append(f"| {alpha} | {pct(cert['mix_clean_acc'][alpha], 1)} | {cells} |")
    if "lipschitz_constant" not in cert:
        lines += [
            "",
            "The Lipschitz bounds were certified with twice the smoothed classifier's Lipschitz "
            "constant (the code's until 2026-11-29); a Lipschitz radius is proportional to 1/L, "
            "so each bound shown at r is the recorded one at r/2 (robust.json keeps the "
            "recorded curves).",
        ]
    check = cert["attack_check"]
    lines += [
        "",
        f"Attack inside the radii (l2 PGD, 10 steps, on the mix at alpha {check['alpha']:g}): "
        f"{check['flips']} prediction changes in {check['attacked']} certified images.",
    ]
    if plot:
        lines += ["", f"![certified accuracy]({plot})"]
    return lines


def masking_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for r in report["rows"]:
        sweep = ", ".join(
            f"{e:.3g}: {pct(a, 0)}%"
            for e, a in zip(r["eps_sweep"]["eps"], r["eps_sweep"]["acc"], strict=True)
        )
        flags = "; ".join(r["autoattack_flags"]) or "none"
        lines.append(
            f"- {r['model']}: PGD accuracy by eps {sweep}. AutoAttack's own flags: {flags}."
        )
    return lines


def measured_line(report: dict[str, Any]) -> str:
    """Which invocation measured the data set, and whether it is kept from the earlier report."""
    source = report["measured_by"]
    line = f"Measured by `{source['command']}` (report written at commit "
    line += f"{str(source.get('git_commit'))[:7]}"
    by_commit: dict[str, list[str]] = {}
    for stage, commit in source.get("stage_commits", {}).items():
        by_commit.setdefault(str(commit)[:7], []).append(stage)
    if by_commit:
        stages = "; ".join(f"{c}: {', '.join(names)}" for c, names in by_commit.items())
        line += f"; its stages ran at {stages}"
    line += ")."
    if report.get("kept"):
        line = (
            "Kept from the earlier report: this machine's work directory holds no collected "
            "report for this data set. " + line
        )
    return line


def dataset_section(name: str, report: dict[str, Any], plots: dict[str, str]) -> list[str]:
    data = report["data"]
    train = report["training"]
    std, rob = train["standard"], train["robust"]
    note = " (the JPEG copy of CIFAR-10, cifar10-jpeg.zip)" if data.get("variant") == "jpeg" else ""
    lines = [
        f"## {name}{note}, l_inf eps = {report['eps']:.4g}",
        "",
        measured_line(report),
        "",
        f"Bases: standard {std['architecture']} ({std['epochs']} epochs, "
        f"{std['wall_seconds']:.0f} s); robust {rob['architecture']} "
        f"({rob['method']}, {rob['epochs']} epochs, {rob['wall_seconds']:.0f} s); each trained on "
        f"{std['train_images']} images, holding out {std.get('validation_images')} "
        f"(validation accuracy {pct(std.get('validation_acc'))}% and "
        f"{pct(rob.get('validation_acc'))}%).",
        "",
        *model_table(report),
        "",
        *goal_lines(report),
        "",
        "### Fixed mix: validation sweep of alpha, s_g and s_h",
        "",
        *sweep_table(report),
        "",
        f"![trade-off]({plots['tradeoff']})",
        "",
    ]
    adaptive = adaptive_lines(report)
    if adaptive:
        lines += [
            "### Adaptive mix: the gate, and the validation sweep of its knobs",
            "",
            *adaptive,
            "",
        ]
        if "gate" in plots:
            lines += [f"![the gate per epoch]({plots['gate']})", ""]
    else:
        lines += [
            "No adaptive mix in this report: its pipeline ran without the mixing network "
            "(`--no-adaptive`); the stage runs when `benchmarks/robust.py` runs again without it.",
            "",
        ]
    certify = certify_lines(report, plots.get("certified"))
    if certify:
        lines += ["### Certified robustness (l2)", "", *certify, ""]
    lines += ["### Gradient-masking checks", "", *masking_lines(report), ""]
    return lines
