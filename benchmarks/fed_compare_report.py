"""The report of benchmarks/fed_compare.py: docs/results/federated.md, one function per section,
and its plots. The columns it shows are the numbers fed_compare.py gathers from each run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import image_weights
from fed_sweep_specs import KNOBS

COLUMNS = [
    ("generic_acc", "generic"),
    ("selected_generic", "generic @ val round"),
    ("generic_val_acc", "generic val"),
    ("universal_acc", "universal (SSE-C)"),
    ("local_acc_masked", "local (masked)"),
    ("selected_local", "local @ val round"),
    ("local_val_acc", "local val"),
    ("local_acc_unmasked", "local (unmasked)"),
    ("generic_head", "head"),
    ("generic_middle", "middle"),
    ("generic_tail", "tail"),
]
# What FedLoGe is judged against: FedAvg on generic accuracy, and every method that
# personalises on local accuracy; at the final round and at the validation-chosen round.
RIVALS = (
    ("generic_acc", ("fedavg",)),
    ("selected_generic", ("fedavg",)),
    ("local_acc_masked", ("fedavg", "fedper", "fedrep")),
    ("selected_local", ("fedavg", "fedper", "fedrep")),
)
# The authors' run logs, CIFAR-10-LT a=0.5 IF=100, ResNet-18, 500 rounds (METHODS.md, sec. 1).
AUTHORS = {
    "fedavg": (72.1, 86.6),
    "fedprox": (71.9, 86.3),
    "ditto": (71.8, 89.2),
    "fedetf": (68.9, 71.7),
    "fedloge": (73.1, 89.4),
}


def cell(stat: dict[str, float], *, scale: float = 100.0, digits: int = 1) -> str:
    if stat["n"] == 0:
        return "-"
    text = f"{scale * stat['mean']:.{digits}f}"
    return text + (f" ± {scale * stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def markdown(
    results: dict[str, Any], meta: dict[str, Any], settings: dict[str, dict[str, Any]]
) -> str:
    """The report for people; `settings` gives each setting's title and config."""
    lines = intro_lines(meta)
    for setting, block in results.items():
        lines += setting_lines(settings[setting], block)
    lines += missing_lines(meta["missing"], settings)
    lines += authors_lines()
    return "\n".join(lines) + "\n"


def intro_lines(meta: dict[str, Any]) -> list[str]:
    """The title, how the numbers were made and what each column means."""
    return [
        "# Federated long-tailed learning: FedLoGe and its baselines",
        "",
        f"Written by `{meta['command']}` on {meta['date']}; machine: {meta['machine']}. "
        f"This invocation took {meta['wall_seconds'] / 60:.0f} min (finished runs are reused).",
        "",
        "Accuracy in %, mean ± std over seeds, on test images. **selected_by: validation**: "
        "each method's config is the one benchmarks/fed_sweep.py chose on the clients' "
        "held-out images (docs/results/fed-sweep.md; `tuned` says so, `defaults` marks a "
        "method not swept yet; in brackets the learning rate and the method's own knob), and "
        "the `@ val round` columns give the test accuracy of the "
        "round whose validation accuracy was highest (generic and local chosen apart); the "
        "other columns are the final round's. No number is chosen on test. `generic val` / "
        "`local val`: the final round's validation accuracy (class-balanced over all clients' "
        "held-out images / mean over clients). Generic: the global model on the "
        "balanced test set (FedLoGe: psi_hat; `universal` is its SSE-C). Local: unweighted mean "
        "over clients of their local test sets, personalised where the method personalises; "
        "masked = classes a client never trained on get -inf logits, for every method alike. "
        "Head/middle/tail: generic per-class accuracy grouped by cumulative training frequency "
        "(75% / 95%). s/round: median training seconds of a round (all sampled clients, one "
        "process, one torch thread (the first runs had two), evaluation excluded; other jobs "
        "may have shared the machine, so compare engines with results/federated-engines.md, "
        "not with this column). `Paired by seed`: FedLoGe minus a rival on each seed both "
        "ran; a seed fixes the partition, the clients sampled each round and the validation "
        "images for every method alike, so these differences are free of the spread that "
        "partitions alone cause.",
    ]


def seeds_cell(row: dict[str, Any]) -> str:
    """The seeds of a row (their count for rows from before seeds were recorded), and whether
    it is kept from an earlier report."""
    seeds = [s for s in row.get("seeds", []) if s is not None]
    count = row["generic_acc"]["n"] or row["local_acc_masked"]["n"]
    text = ", ".join(str(s) for s in seeds) if seeds else str(count)
    return text + (" (kept)" if row.get("kept_from") else "")


def config_cell(algorithm: str, row: dict[str, Any]) -> str:
    """`tuned` or `defaults`, with the learning rate and the method's own swept knob."""
    values = [f"lr {row['config']['optim.lr']:g}"]
    key = KNOBS[algorithm][0]
    if key.startswith("algorithm.options."):
        name = key.rpartition(".")[2]
        values.append(f"{name} {row['config']['options'][name]:g}")
    label = "tuned" if row["selected_by"] == "validation" else "defaults"
    return f"{label} ({', '.join(values)})"


def setting_lines(spec: dict[str, Any], block: dict[str, Any]) -> list[str]:
    """One setting's section: every method's row, the verdicts and the plots."""
    lines = [
        "",
        f"## {spec['title']}",
        "",
        f"Config `{spec['config']}`. " + trained_on(block["algorithms"]),
        "",
        "| algorithm | config | seeds | "
        + " | ".join(label for _, label in COLUMNS)
        + " | s/round |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    for algorithm, row in block["algorithms"].items():
        cells = [cell(row[key]) for key, _ in COLUMNS]
        seconds = cell(row["seconds_per_round"], scale=1.0, digits=1)
        seeds = seeds_cell(row)
        lines.append(
            f"| {algorithm} | {config_cell(algorithm, row)} | {seeds} | "
            + " | ".join(cells)
            + f" | {seconds} |"
        )
    kept = sorted({c for row in block["algorithms"].values() for c in row.get("kept_from", [])})
    if kept:
        lines += [
            "",
            "`kept`: rows of an earlier report whose runs this machine does not hold, as "
            + ", ".join(f"`{c}`" for c in kept)
            + " reported them.",
        ]
    lines += validation_lines(block.get("validation_counts", {}))
    lines += ["", *verdict(block["algorithms"]), *paired_lines(block.get("paired", {}))]
    lines += against_every_method(block["algorithms"])
    lines += per_class_lines(block["algorithms"])
    lines += ["", "Plots: the first seed's run of each method (per class: FedAvg and FedLoGe)."]
    for plot in block["plots"]:
        lines += ["", f"![{Path(plot).stem}]({Path(plot).name})"]
    return lines


def per_class_lines(rows: dict[str, Any]) -> list[str]:
    """Generic accuracy per class, mean over seeds, for every method with a global model: where
    a method's class-balanced mean comes from (the classes in index order, which is their
    training frequency order in these long-tailed settings)."""
    rows = {a: row for a, row in rows.items() if row.get("generic_per_class")}
    if not rows:
        return []
    counts = next(iter(rows.values())).get("train_counts") or []
    classes = len(next(iter(rows.values()))["generic_per_class"])
    header = [f"{k} ({counts[k]})" if k < len(counts) else str(k) for k in range(classes)]
    lines = [
        "",
        "Generic accuracy per class, mean over seeds (in brackets the class's training images, "
        "first seed):",
        "",
        "| algorithm | " + " | ".join(header) + " |",
        "|---" * (classes + 1) + "|",
    ]
    for algorithm, row in rows.items():
        values = " | ".join(f"{100 * v:.1f}" for v in row["generic_per_class"])
        lines.append(f"| {algorithm} | {values} |")
    return lines


def missing_lines(missing: list[Any], settings: dict[str, dict[str, Any]]) -> list[str]:
    """The (setting, algorithm, seed) jobs without a finished run, per setting."""
    if not missing:
        return []
    lines = ["", "## Not run yet", ""]
    for setting in dict.fromkeys(setting for setting, _, _ in missing):
        runs = [f"{a} seed {s}" for name, a, s in missing if name == setting]
        lines.append(f"- {settings[setting]['title']}: {', '.join(runs)}")
    return lines


def authors_lines() -> list[str]:
    """The authors' own numbers and how our settings differ from theirs."""
    return [
        "",
        "## The authors' numbers",
        "",
        "CIFAR-10-LT, alpha 0.5, IF 100, ResNet-18, 40 clients, batch 8, 5 local epochs, "
        "500 rounds, best round of their logs on the test set (generic / local, %). Our "
        "settings differ: 2 local epochs and 60 rounds, small CNNs (Fashion-MNIST) or ResNet-8 "
        "(CIFAR-10) instead of ResNet-18, and the final or validation-chosen round instead of "
        "the best on test.",
        "",
        "| algorithm | generic | local |",
        "|---|---:|---:|",
        *(f"| {a} | {g} | {loc} |" for a, (g, loc) in AUTHORS.items()),
    ]


def trained_on(rows: dict[str, Any]) -> str:
    """Which machine trained which methods (the s/round column depends on it)."""
    machines = sorted({m for row in rows.values() for m in row["machines"]})
    parts = [
        f"{m} ({', '.join(a for a, row in rows.items() if m in row['machines'])})" for m in machines
    ]
    return "Trained on: " + "; ".join(parts) + "."


ONE_SEED = "one seed: no spread to beat"
NO_NUMBER = "no such number"


def not_judged(ours: dict[str, Any], rival: dict[str, Any], *keys: str) -> str | None:
    """Why the gaps between FedLoGe's and a rival's means of `keys` are no verdict, or None, in
    this order: a number missing (`NO_NUMBER`), one of the two tuned on validation and the other
    at its defaults, means over other seeds (named), one seed (`ONE_SEED`), or a seed's number
    missing from a mean (it drops its seed silently)."""
    if any(not ours[key]["n"] or not rival[key]["n"] for key in keys):
        return NO_NUMBER
    if ours.get("selected_by") != rival.get("selected_by"):
        untuned = "FedLoGe" if ours.get("selected_by") == "defaults" else "the rival"
        return f"{untuned} at its defaults"
    seeds = ours.get("seeds")
    if seeds != rival.get("seeds"):
        return f"seeds {', '.join(map(str, rival.get('seeds') or []))}"
    if min(min(ours[key]["n"], rival[key]["n"]) for key in keys) < 2:
        return ONE_SEED
    count = len(seeds) if seeds is not None else ours[keys[0]]["n"]  # unrecorded: equal counts
    if any(not ours[key]["n"] == rival[key]["n"] == count for key in keys):
        return "a seed's number missing"
    return None


def verdict(rows: dict[str, Any]) -> list[str]:
    """Does FedLoGe beat FedAvg (generic) and FedAvg/FedPer/FedRep (local) beyond the spread?"""
    if "fedloge" not in rows:
        return []
    ours = rows["fedloge"]
    out = []
    for key, rivals in RIVALS:
        for rival in (r for r in rivals if r in rows):
            reason = not_judged(ours, rows[rival], key)
            if reason == NO_NUMBER:
                continue
            gap = ours[key]["mean"] - rows[rival][key]["mean"]
            spread = max(ours[key]["std"], rows[rival][key]["std"])
            what = dict(COLUMNS)[key]
            if reason == ONE_SEED:
                side = "ahead of" if gap > 0 else "behind"
                out.append(
                    f"- FedLoGe is {side} {rival} on {what} by {100 * abs(gap):.1f} points, "
                    "on one seed: no spread to judge the gap by."
                )
                continue
            if reason:
                out.append(
                    f"- FedLoGe against {rival} on {what}: {100 * gap:+.1f} points, not judged "
                    f"({reason})."
                )
                continue
            word = "beats" if gap > spread else "does not beat"
            out.append(
                f"- FedLoGe {word} {rival} on {what}: "
                f"{100 * gap:+.1f} points (largest seed std {100 * spread:.1f})."
            )
    if "fedavg" in rows:
        out += ["", *goal(ours, rows["fedavg"])]
    return out


def validation_lines(counts: dict[str, list[int]]) -> list[str]:
    """How many validation images the rarest class has at each compared seed, and what one of
    them weighs in the class-balanced generic validation accuracy the `@ val round` picks by."""
    if not counts:
        return []
    rarest = {seed: min(n for n in per_class if n) for seed, per_class in counts.items()}
    each = ", ".join(f"{n} (seed {seed})" for seed, n in rarest.items())
    weight = max(image_weights(per_class)[0] for per_class in counts.values())
    return [
        "",
        f"Validation images of the rarest class, all clients together: {each}. One of them "
        f"moves generic validation accuracy by up to {weight:.1f} points, so the generic "
        "`@ val round` choice can turn on a few images of the tail.",
    ]


def against_every_method(rows: dict[str, Any]) -> list[str]:
    """FedLoGe minus each other method on the four headline columns, marked where the gap
    exceeds the larger seed std (the bar RIVALS applies to FedAvg, FedPer and FedRep)."""
    if "fedloge" not in rows or len(rows) < 2:
        return []
    ours = rows["fedloge"]
    keys = [key for key, _ in RIVALS]
    lines = [
        "",
        "FedLoGe minus every other method (points; **bold**: FedLoGe ahead by more than the "
        "larger seed std, _italic_: behind by more than it, plain: within it, one seed only, "
        "means over other seeds than FedLoGe's (named), or one of the two at its defaults "
        "(said); - where the method has no such number):",
        "",
        "| method | " + " | ".join(dict(COLUMNS)[key] for key in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for rival, row in rows.items():
        if rival == "fedloge":
            continue
        cells = []
        for key in keys:
            reason = not_judged(ours, row, key)
            if reason == NO_NUMBER:
                cells.append("-")
                continue
            gap = 100 * (ours[key]["mean"] - row[key]["mean"])
            spread = 100 * max(ours[key]["std"], row[key]["std"])
            text = f"{gap:+.1f}"
            if reason:  # one seed stays plain; other seeds, or one of the two untuned, said
                cells.append(text if reason == ONE_SEED else f"{text} ({reason})")
                continue
            cells.append(f"**{text}**" if gap > spread else f"_{text}_" if -gap > spread else text)
        lines.append(f"| {rival} | " + " | ".join(cells) + " |")
    return lines


def paired_lines(paired: dict[str, dict[str, Any]]) -> list[str]:
    """FedLoGe minus each rival, seed by seed: a seed fixes the partition, the clients sampled
    in each round and the validation images for every method alike, so the per-seed difference
    removes the spread that partitions alone cause."""
    lines = []
    for rival, keys in paired.items():
        for key, diff in keys.items():
            seeds = ", ".join(str(s) for s in diff["seeds"])
            each = ", ".join(f"{100 * d:+.1f}" for d in diff["differences"])
            over = (
                f"seeds {seeds}; mean {100 * diff['mean']:+.1f} ± {100 * diff['std']:.1f}"
                if len(diff["differences"]) > 1
                else f"seed {seeds} only"
            )
            if untuned := diff.get("at_defaults"):
                over += f"; {' and '.join(untuned)} at defaults, not judged"
            lines.append(
                f"- Paired by seed, FedLoGe minus {rival} on {dict(COLUMNS)[key]}: {each} ({over})."
            )
    if not lines:
        return []
    return ["", *lines]


def goal(ours: dict[str, Any], fedavg: dict[str, Any]) -> list[str]:
    """The issue's bar: generic above FedAvg's by more than the larger seed std, and local
    accuracy not below FedAvg's; at the final round and at the validation-chosen round."""
    lines = []
    for generic, local, when in (
        ("generic_acc", "local_acc_masked", "final round"),
        ("selected_generic", "selected_local", "validation-chosen round"),
    ):
        reason = not_judged(ours, fedavg, generic, local)
        if reason == NO_NUMBER:
            lines.append(f"- Goal at the {when}: not judged ({reason}).")
            continue
        gap = ours[generic]["mean"] - fedavg[generic]["mean"]
        spread = max(ours[generic]["std"], fedavg[generic]["std"])
        local_gap = ours[local]["mean"] - fedavg[local]["mean"]
        said = "met" if gap > spread and local_gap >= 0 else "not met"
        against = f" vs std {100 * spread:.1f}"
        if reason:
            said, against = f"not judged ({reason})", "" if reason == ONE_SEED else against
        lines.append(
            f"- Goal at the {when}: {said} (generic {100 * gap:+.1f}{against}; "
            f"local {100 * local_gap:+.1f})."
        )
    return lines


def plots(setting: str, block: dict[str, list[dict[str, Any]]], out: Path) -> list[str]:
    """Accuracy per round (the first seed of every method) and per-class accuracy vs frequency."""
    from trustvision.federated.plots import plot_class_frequency, plot_methods_per_round

    rounds_png = plot_methods_per_round(
        {algorithm: seeds[0]["history"] for algorithm, seeds in block.items()},
        out / f"federated_{setting}_rounds.png",
    )
    first = next(iter(block.values()))[0]
    has_generic = [a for a in block if block[a][0]["generic_per_class"] is not None]
    chosen = [a for a in ("fedavg", "fedloge") if a in has_generic] or has_generic[:2]
    per_class = plot_class_frequency(
        {a: block[a][0]["generic_per_class"] for a in chosen},
        counts=first["train_counts"],
        classes=[str(c) for c in range(len(first["train_counts"]))],
        path=out / f"federated_{setting}_per_class.png",
    )
    return [str(rounds_png), str(per_class)]
