"""The mixes' sections of docs/results/robust.md (benchmarks/robust_report.py): the validation
sweeps of the fixed and the adaptive mix, the chosen knobs, and the gate's alphas."""

from __future__ import annotations

import itertools
from typing import Any

from common import pct


def _t(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _is_chosen(point: dict[str, Any], chosen: dict[str, Any]) -> bool:
    """Whether a sweep point has the chosen knobs (`alpha_range`, a summary of alpha_low and
    alpha_high, is not a key of the points)."""
    return all(point.get(k) == v for k, v in chosen.items() if k != "alpha_range")


def validation_line(selection: dict[str, Any]) -> str:
    images = selection.get("validation_images")
    if not images:
        return "No validation sweep: the configured values were kept."
    split = images["split"]
    return (
        f"Validation images: {images['images_clean']} for clean accuracy, the first "
        f"{images['images_attacked']} of them attacked, out of {images['held_out']} held out "
        f"(`data.validation={split['validation']}`, seed {split['seed']}): "
        f"{images['drawn']}. Test images were not read."
    )


def _knob(value: Any) -> str:
    """A knob's value: a number, a range [low, high], or - (unused)."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return _t(value)


def knob_lines(selection: dict[str, Any]) -> list[str]:
    lines = ["| knob | chosen | selected_by | grid |", "|---|---:|---|---|"]
    for knob, k in selection["knobs"].items():
        grid = ", ".join(_knob(v) for v in k["grid"])
        lines.append(f"| {knob} | {_knob(k['value'])} | {k['selected_by']} | {grid} |")
    return lines


def sweep_table(report: dict[str, Any]) -> list[str]:
    selection = report["selection"]["fixed mix"]
    chosen = selection["chosen"]
    lines = [
        f"Sweep attack: {report['sweep_attack']}. Chosen by the rule: {selection['rule']} "
        f"(the robust base: {pct(selection['reference_robust_acc'], 1)}%). Points are attacked "
        "in order of clean accuracy; once one is admitted, the less accurate ones could not be "
        "chosen and are not attacked.",
        "",
        validation_line(selection),
        "",
        *knob_lines(selection),
        "",
        "| alpha | s_g | s_h | validation clean acc (%) | validation robust acc (%) | seconds |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report["sweep"]:
        mark = "**" if _is_chosen(p, chosen) else ""
        lines.append(
            f"| {mark}{p['alpha']:g}{mark} | {_t(p['temperature_std'])} | {_t(p['temperature_rob'])} "
            f"| {pct(p['clean_acc'])} | {robust_cell(p)} | {p['seconds']:.0f} |"
        )
    lines += ["", "(- : a temperature unused at that alpha; bold: the chosen point.)"]
    return lines


def robust_cell(point: dict[str, Any]) -> str:
    """A sweep point's validation robust accuracy: "not attacked", a number, or "<= n"
    where its attacks stopped once it could no longer be admitted (an upper bound)."""
    if point["robust_acc"] is None:
        return "not attacked"
    bound = "" if point.get("robust_complete", True) else "<= "
    return f"{bound}{pct(point['robust_acc'], 1)}"


def fixed_clean_at(sweep: list[dict[str, Any]], robust_acc: float) -> float | None:
    """The most clean accuracy the fixed mix can have at a given sweep robust accuracy: linear
    interpolation (a coin flip between two mixes reaches it) along each (s_g, s_h) curve, the
    best curve's. A point whose attacks stopped early enters at its bound, the most robust it
    can be, so that a mixing network's gain over this curve is the least it gains."""
    attacked = [p for p in sweep if p["robust_acc"] is not None]
    best = None
    for curve in curves(attacked):
        points = sorted((p["robust_acc"], p["clean_acc"]) for p in curve)
        for (r0, c0), (r1, c1) in itertools.pairwise(points):
            if r0 <= robust_acc <= r1:
                clean = c0 if r1 == r0 else c0 + (c1 - c0) * (robust_acc - r0) / (r1 - r0)
                best = clean if best is None else max(best, clean)
    return best


def curves(sweep: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The alpha curves of a sweep, one per (s_g, s_h); alpha 0 and 1 belong to every curve."""
    combos = dict.fromkeys(
        (p.get("temperature_std"), p.get("temperature_rob"))
        for p in sweep
        if p.get("temperature_std") is not None and p.get("temperature_rob") is not None
    )
    if not combos:
        return [sweep]
    return [
        [
            p
            for p in sweep
            if p.get("temperature_std") in (None, s_g) and p.get("temperature_rob") in (None, s_h)
        ]
        for s_g, s_h in combos
    ]


def _alpha(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def gate_lines(report: dict[str, Any]) -> list[str]:
    """The gate's mean alpha on clean and on attacked images: while training, on validation
    images after training, and on the test images AutoAttack used."""
    last = (report["adaptive"].get("history") or [{}])[-1]
    test = next((r.get("gate") for r in report["rows"] if r["model"] == "adaptive mix"), None)
    net, chosen = report["config"]["mixnet"], report["adaptive"]
    trained_gate = f"training gate: scale {net['gamma_scale']:g}, bias {net['gamma_bias']:g}"
    chosen_gate = f"chosen gate: scale {chosen['gamma_scale']:g}, bias {chosen['gamma_bias']:g}"
    lines = [
        "The gate's mean alpha (the robust base's weight) on clean images, under an attack "
        "not aimed at the gate (as none of AutoAttack's are, though their gradients run through "
        "it) and under one that also pushes the gate "
        "towards the standard base (adaptive):",
        "",
        "| where | clean | attacked | adaptive | attacked - clean |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [
        (
            "training batches, last epoch (training mode: clamp, batch statistics)",
            last.get("train_alpha_clean"),
            None,
            last.get("train_alpha_attacked"),
        ),
        (
            f"validation images after training (PGD on the mix; {trained_gate})",
            last.get("val_alpha_clean"),
            last.get("val_alpha_attacked"),
            last.get("val_alpha_adaptive"),
        ),
    ]
    if test:
        rows.append(
            (
                f"test images ({test['n']}; {test['attacks']['attacked']} / "
                f"{test['attacks']['adaptive']}; {chosen_gate})",
                test["alpha_clean"],
                test["alpha_attacked"],
                test["alpha_adaptive"],
            )
        )
    for label, clean, attacked, adaptive in rows:
        diff = None if clean is None or attacked is None else attacked - clean
        lines.append(
            f"| {label} | {_alpha(clean)} | {_alpha(attacked)} | {_alpha(adaptive)} | "
            f"{_alpha(diff)} |"
        )
    if "gate_bn_updates" in last:
        lines += [
            "",
            "Raw gamma before the gate on those validation images (mean +- std): clean "
            f"{last['val_raw_gamma_mean_clean']:.3g} +- {last['val_raw_gamma_std_clean']:.3g}, "
            f"attacked {last['val_raw_gamma_mean_attacked']:.3g} +- "
            f"{last['val_raw_gamma_std_attacked']:.3g}; the gate's BatchNorm after "
            f"{last['gate_bn_updates']} updates: running mean {last['gate_bn_running_mean']:.3g}, "
            f"running variance {last['gate_bn_running_var']:.3g}.",
        ]
    return lines


def chosen_lines(report: dict[str, Any]) -> list[str]:
    """The two chosen mixes side by side on validation images, and whether the rule admitted
    each (within the tolerance of the robust base) or fell back to the most robust point."""
    adaptive = report["adaptive"]
    reference = adaptive.get("bias_reference_robust_acc")
    tolerance = report["config"]["sweep"]["tolerance"]
    picks = {}
    for label, points, selection in (
        ("fixed", report["sweep"], report["selection"]["fixed mix"]),
        ("adaptive", adaptive.get("bias_sweep") or [], adaptive["selection"]),
    ):
        picks[label] = next((p for p in points if _is_chosen(p, selection["chosen"])), None)
    if reference is None or any(p is None or p["robust_acc"] is None for p in picks.values()):
        return []

    def admitted(p: dict[str, Any]) -> str:
        ok = p.get("robust_complete", True) and p["robust_acc"] >= reference - tolerance - 1e-9
        return "admitted" if ok else "not admitted: the most robust point"

    fixed, gate = picks["fixed"], picks["adaptive"]
    assert fixed is not None and gate is not None  # checked above, for the type checker
    return [
        f"On validation images (the robust base: {pct(reference, 1)}%, tolerance "
        f"{100 * tolerance:g} points): the adaptive mix {pct(gate['clean_acc'])}% clean / "
        f"{robust_cell(gate)}% robust ({admitted(gate)}), the fixed mix "
        f"{pct(fixed['clean_acc'])}% / {robust_cell(fixed)}% ({admitted(fixed)}): "
        f"{100 * (gate['clean_acc'] - fixed['clean_acc']):+.2f} points of clean accuracy for "
        "the mixing network.",
        "",
    ]


def adaptive_lines(report: dict[str, Any]) -> list[str]:
    adaptive = report.get("adaptive")
    if not adaptive:
        return []
    selection = adaptive["selection"]
    lines = [
        f"Mixing network: trained {adaptive['train_seconds']:.0f} s on "
        f"{adaptive.get('mixnet_train_images', 'n/a')} training images both bases trained on "
        f"(no validation image); gamma bias {adaptive['gamma_bias']:g}, scale "
        f"{adaptive.get('gamma_scale', 1.0):g}, alpha in [{adaptive.get('alpha_low', 0.0):g}, "
        f"{adaptive.get('alpha_high', 1.0):g}], s_g {adaptive['temperature_std']:g}, s_h "
        f"{adaptive['temperature_rob']:g}, chosen by the "
        f"rule: {selection['rule']} (the robust base: "
        f"{pct(adaptive.get('bias_reference_robust_acc'), 1)}%). The last column compares with "
        "the best fixed mix at the same validation robust accuracy (interpolated on the alpha "
        "sweep's attacked points, those whose attacks stopped early at their bound, which "
        "favours the fixed mix; n/a where none bracket it): positive means the mixing "
        "network buys at least that much clean accuracy a constant alpha cannot. Points are "
        "attacked in order of "
        "clean accuracy; once one is admitted, the less accurate ones could not be chosen and "
        "are not attacked.",
        "",
        *chosen_lines(report),
        *gate_lines(report),
        "",
        validation_line(selection),
        "",
        *knob_lines(selection),
    ]
    if adaptive.get("bias_sweep"):
        lines += [
            "",
            "| gamma bias | scale | alpha range | s_g | s_h | validation clean acc (%) | "
            "mean alpha, clean | validation robust acc (%) | vs fixed mix (points) |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for p in adaptive["bias_sweep"]:
            exact = p["robust_acc"] is not None and p.get("robust_complete", True)
            fixed = fixed_clean_at(report["sweep"], p["robust_acc"]) if exact else None
            delta = "n/a" if fixed is None else f"{100 * (p['clean_acc'] - fixed):+.2f}"
            mark = "**" if _is_chosen(p, selection["chosen"]) else ""
            alpha_range = _knob((p.get("alpha_low", 0.0), p.get("alpha_high", 1.0)))
            mean_alpha = p.get("mean_alpha_clean")
            lines.append(
                f"| {mark}{p['gamma_bias']:g}{mark} | {p.get('gamma_scale', 1.0):g} | "
                f"{alpha_range} | {p['temperature_std']:g} | {p['temperature_rob']:g} | "
                f"{pct(p['clean_acc'])} | {'n/a' if mean_alpha is None else f'{mean_alpha:.3f}'} | "
                f"{robust_cell(p)} | {delta} |"
            )
    return lines
