"""The report of benchmarks/fed_sweep.py: docs/results/fed-sweep.md's tables and the FedLoGe
norm-target plot beside the authors' sweep, from the collected sweeps and the run's meta."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common import FED_SETTINGS as SETTINGS
from common import fed_validation_counts, image_weights
from fed_sweep_kept import search_finished
from fed_sweep_specs import method_of

# The authors' norm sweep (log/norm*.log: CIFAR-100-LT IF 100, ResNet-34, 20 clients, final
# round global accuracy, %), as read in shared METHODS.md.
AUTHORS_NORM = {0.01: 34.6, 0.02: 41.2, 0.06: 41.8, 0.08: 42.4, 0.1: 42.8, 0.2: 41.2, 0.4: 40.1}
AUTHORS_NORM |= {1.0: 38.0, 2.0: 36.2}


def pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}"


def markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report for people; `meta` names each sweep's knob (`knobs`, `follow_ups`)."""
    keys = {name: knob["key"] for name, knob in {**meta["knobs"], **meta["follow_ups"]}.items()}
    lines = intro_lines(meta, fedavg_rates(results))
    for setting, block in results.items():
        lines += ["", f"## {SETTINGS[setting]['title']}", ""]
        lines += kept_lines(block)
        if counts := meta.get("validation_counts", {}).get(setting):
            lines += [*validation_resolution(counts), ""]
        lines += [*choice_table(block, keys), "", trial_hours(block)]
        for name, report in block.items():
            lines += trial_table(name, report, keys[name])
        plots = meta.get("plots", {}).get(setting, {})
        if "plot" in plots:
            lines += ["", f"![FedLoGe norm target, {setting}]({Path(plots['plot']).name})"]
        if "knobs_plot" in plots:
            lines += [
                "",
                "Every sweep's curve: its knob against the validation accuracy that chose "
                "(solid) and the test accuracy never read (dashed), at the round validation "
                "picked; the dotted line marks the chosen value:",
                "",
                f"![every sweep, {setting}]({Path(plots['knobs_plot']).name})",
            ]
        if "lr_plot" in plots:
            lines += [
                "",
                "FedAvg's learning-rate sweep beside FedLoGe's (at its chosen norm target):",
                "",
                f"![learning rate, {setting}]({Path(plots['lr_plot']).name})",
            ]
    return "\n".join(lines) + "\n"


def fedavg_rates(results: dict[str, dict[str, Any]]) -> list[float]:
    """The learning rates validation chose for FedAvg (finished sweeps), over the settings."""
    sweeps = [block["fedavg"] for block in results.values() if "fedavg" in block]
    done = [report for report in sweeps if report.get("complete", True)]
    return sorted({r["chosen"]["params"]["optim.lr"] for r in done if r.get("chosen")})


def spoken(items: Iterable[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    *rest, last = items
    return f"{', '.join(rest)} and {last}" if rest else last


def intro_lines(meta: dict[str, Any], rates: list[float]) -> list[str]:
    """The title and how every method was tuned (`rates`: FedAvg's chosen learning rates)."""
    lines = [
        "# Federated methods tuned on validation, each on its own knob, with equal budgets",
        "",
        f"Written by `{meta['command']}` on {meta['date']}; machine: {meta['machine']}.",
        "",
        "Every method: 7 trials (one per grid value) and 2 more in a second stage (beyond the "
        "grid's edge where the best sat at one, else between the best and its neighbours), "
        "seed 0, the setting's config otherwise "
        "(60 rounds, 2 local epochs, evaluation every 5 rounds). Each client holds out 10% of "
        "its images (stratified) and never trains on them. A trial's score (**selected_by: "
        "validation**) is the validation accuracy of the round that validation picks: "
        "generic (class-balanced over all clients' held-out images, from per-class counts) "
        "for methods with a global model, local (mean over clients) for FedPer and FedRep, "
        "which have none, and for Ditto and FedBABU, whose knob acts only on the personal model "
        "(their generic accuracy is the same at every value). "
        "Test numbers are shown beside it and were never read by any choice. Accuracy in %. "
        "`minutes a trial`: the median wall-clock minutes of the completed trials, with two "
        "sweeps sharing the machine's cores (a trial resumed after its sweep was killed "
        "counts only its resumed part).",
    ]
    if meta.get("inherit_lr"):
        lines += [
            "",
            f"{', '.join(meta['inherit_lr'])}: their own knob is not the learning rate, so "
            "they train at the rate validation chose for FedAvg on the same setting (`at "
            "optim.lr=...` below), not at the config's 0.03: their 9 trials start from "
            "FedAvg's 9.",
        ]
    if not meta.get("follow_ups_run"):
        return lines
    return [
        *lines,
        "",
        "FedLoGe's learning rate stayed at the config's 0.03 while FedAvg's, its only knob, "
        "was tuned"
        + (f" (validation chose {spoken(map(str, rates))})" if rates else "")
        + ", so FedLoGe then has its learning rate swept the same way (grid "
        "and second stage) at the norm target validation chose (`fedloge-lr`): 18 trials to "
        "FedAvg's 9. `compared`: the sweep whose chosen trial (the best validation score over "
        "a method's sweeps) benchmarks/fed_compare.py trains over more seeds; `not yet` while "
        "one of the method's sweeps is unfinished, whose choice is the best `so far`.",
    ]


def kept_lines(block: dict[str, Any]) -> list[str]:
    """What the report says of the sweeps it kept from the earlier one (their runs are gone):
    a finished search's choice is rebuilt for fed_compare; an unfinished one has none yet."""
    kept = [name for name, report in block.items() if report.get("earlier")]
    done = [name for name in kept if search_finished(block, method_of(name))]
    lines = []
    if done:
        lines.append(
            f"Kept from the earlier report ({', '.join(done)}): their runs are gone, their "
            "numbers stay; fed_compare trains their chosen configs again, rebuilt from them."
        )
    if searching := [name for name in kept if name not in done]:
        lines.append(
            f"Kept from the earlier report, their method's search unfinished "
            f"({', '.join(searching)}): their runs are gone; the search continues (an "
            "unfinished sweep from the trials kept), and fed_compare has no choice of theirs "
            "until it ends."
        )
    return [*lines, ""] if lines else []


def validation_resolution(counts: list[int]) -> list[str]:
    """How finely the class-balanced generic validation accuracy can tell trials apart."""
    steps = image_weights(counts)
    return [
        f"Validation images per class at seed 0, all clients together: "
        f"{', '.join(map(str, counts))}. Generic validation accuracy is the mean of the "
        f"classes' accuracies, so one image of the rarest class moves it by {steps[0]:.1f} "
        f"points and one of the next rarest by {steps[1]:.1f}: between trials, a difference "
        "of a point or two may be decided by a few images of the tail."
    ]


def choice_table(block: dict[str, Any], keys: dict[str, str]) -> list[str]:
    """One row per sweep of a setting: its knob, the values tried and the one chosen."""
    lines = [
        "| sweep | knob | values tried | chosen | val (chosen) | generic test | local test "
        "| rounds (generic / local) | trials done | minutes a trial | compared |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, report in block.items():
        key = keys[name]
        label = f"`{key}`" + "".join(f" at {k}={v}" for k, v in report.get("fixed", {}).items())
        chosen = report.get("chosen")
        done = sum(t["state"] == "COMPLETE" for t in report["trials"])
        done = f"{done}" if report.get("complete", True) else f"{done} (unfinished)"
        ran = [t for t in report["trials"] if t["state"] != "RUNNING" and key in t["params"]]
        tried = sorted({t["params"][key] for t in ran})
        minutes = trial_minutes(report)
        if chosen is None:
            lines.append(
                f"| {name} | {label} | {tried} | - | - | - | - | - | {done} | {minutes} | - |"
            )
            continue
        sel = chosen["numbers"]["selected"]
        rounds = " / ".join(str(sel[k]["round"]) if k in sel else "-" for k in ("generic", "local"))
        # fed_compare gets a method's choice only once all of its sweeps are complete
        searching = not search_finished(block, method_of(name))
        so_far = " (so far)" if not report.get("complete", True) else ""
        compared = "not yet" if searching else "yes" if report.get("final") else "no"
        lines.append(
            f"| {name} | {label} | {tried} | {chosen['params'][key]}{so_far} | "
            f"{pct(chosen['validation'])} | {pct(sel.get('generic', {}).get('test'))} | "
            f"{pct(sel.get('local', {}).get('test'))} | {rounds} | {done} | {minutes} | "
            f"{compared} |"
        )
    return lines


def trial_minutes(report: dict[str, Any]) -> str:
    """Median wall minutes of a sweep's completed trials; '-' where none says."""
    minutes = [
        t["seconds"] / 60 for t in report["trials"] if t["state"] == "COMPLETE" and t.get("seconds")
    ]
    return f"{statistics.median(minutes):.0f}" if minutes else "-"


def trial_hours(block: dict[str, Any]) -> str:
    """The wall-clock hours a setting's sweeps took, in all and per sweep: a lower bound where
    a trial killed with its sweep recorded no time (its retry did)."""
    finished = {"COMPLETE", "FAIL", "PRUNED", None}  # None: a record without a state
    trials = [t for r in block.values() for t in r["trials"] if t.get("state") in finished]
    untimed = sum(t.get("seconds") is None for t in trials)
    hours = {
        name: sum(t.get("seconds") or 0 for t in report["trials"]) / 3600
        for name, report in block.items()
    }
    each = ", ".join(f"{name} {value:.1f}" for name, value in hours.items())
    unknown = (
        f"; {untimed} killed with their sweep recorded none, so this is a lower bound"
        if untimed
        else ""
    )
    return (
        f"Trial time: {sum(hours.values()):.1f} hours in all (the sum of the wall-clock "
        f"`seconds` of the {len(trials) - untimed} trials that recorded one, failed ones "
        f"included{unknown}): {each}."
    )


def trial_table(algorithm: str, report: dict[str, Any], key: str) -> list[str]:
    """Every trial of one sweep, in the order of its knob's value `key`."""
    lines = [
        "",
        f"### {algorithm}: every trial",
        "",
        "| " + key + " | generic val | generic test | local val | local test "
        "| final generic test | final local test | state |",
        "|---|---|---|---|---|---|---|---|",
    ]
    complete = report.get("complete", True)
    for t in sorted(report["trials"], key=lambda t: t["params"].get(key, 0)):
        n = t.get("numbers", {"selected": {}, "final": {}})
        sel, fin = n["selected"], n["final"]
        best = report.get("chosen") and t["id"] == report["chosen"]["id"]
        mark = "" if not best else " **(chosen)**" if complete else " **(best so far)**"
        note = f" ({t['note']})" if t.get("note") else ""  # e.g. a killed trial, run again
        lines.append(
            f"| {t['params'].get(key)}{mark} | {pct(sel.get('generic', {}).get('val'))} | "
            f"{pct(sel.get('generic', {}).get('test'))} | {pct(sel.get('local', {}).get('val'))} | "
            f"{pct(sel.get('local', {}).get('test'))} | {pct(fin.get('generic_acc'))} | "
            f"{pct(fin.get('local_acc'))} | {t['state']}{note} |"
        )
    return lines


def norm_plot(results: dict[str, dict[str, Any]], out: Path, key: str) -> dict[str, dict[str, str]]:
    """FedLoGe's norm target against validation and test accuracy, per setting, beside the
    authors' sweep (another data set and backbone: its shape, not its level, compares);
    `key` is the norm target's config key."""
    from trustvision.report.figures import plt, save_figure

    made: dict[str, dict[str, str]] = {}
    for setting, block in results.items():
        report = block.get("fedloge")
        if report is None or not (done := completed(report, key)):
            continue
        fig, (ax, authors) = plt.subplots(1, 2, figsize=(11, 4))
        for kind, style in (("generic", "-"), ("local", "--")):
            for part, marker in (("val", "o"), ("test", "s")):
                x, y = curve(done, key, kind, part)
                ax.plot(x, y, style, marker=marker, label=f"{kind} {part}")
        chosen = report.get("chosen")
        if chosen is not None:
            label = "chosen (val)" if report.get("complete", True) else "best so far (val)"
            ax.axvline(chosen["params"][key], color="grey", linestyle=":", label=label)
        log_axis(ax, [t["params"][key] for t in done])
        ax.set(xlabel="SSE-C norm target", ylabel="top-1 % (round chosen on val)")
        ax.set_title(SETTINGS[setting]["title"], fontsize=9)
        ax.legend(fontsize=8)
        authors.plot(list(AUTHORS_NORM), list(AUTHORS_NORM.values()), "k-o")
        authors.set(xscale="log", xlabel="SSE-C norm target", ylabel="global top-1 % (final round)")
        authors.set_title("authors' logs: CIFAR-100-LT, ResNet-34", fontsize=9)
        made[setting] = {
            "plot": str(save_figure(fig, out / f"fed_sweep_{setting}_fedloge_norm.png"))
        }
    return made


def log_axis(ax: Any, values: list[float]) -> None:
    """A log x axis labelled as plain numbers at the powers of ten, and at 2 and 5 times them
    where the `values` span under three decades: matplotlib's default labels its minor ticks
    as well when they span under two, and those labels overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    wide = max(values) >= 1000 * min(values)
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def completed(report: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """A sweep's finished trials in the order of their `key`."""
    done = [t for t in report["trials"] if t["state"] == "COMPLETE"]
    return sorted(done, key=lambda t: t["params"][key])


def curve(done: list[dict[str, Any]], key: str, kind: str, part: str) -> tuple[list, list]:
    """(knob values, % accuracy) of `kind` ("generic", "local") on `part` ("val", "test") at
    the round validation picked."""
    nan = float("nan")
    y = [100 * t["numbers"]["selected"].get(kind, {}).get(part, nan) for t in done]
    return [t["params"][key] for t in done], y


def lr_plot(results: dict[str, dict[str, Any]], out: Path, key: str) -> dict[str, dict[str, str]]:
    """FedAvg's learning-rate sweep and FedLoGe's follow-up on one axis, per setting where both
    ran: generic accuracy on validation (what chose) and on test (never read)."""
    from trustvision.report.figures import plt, save_figure

    made: dict[str, dict[str, str]] = {}
    for setting, block in results.items():
        sweeps = {"FedAvg": block.get("fedavg"), "FedLoGe": block.get("fedloge-lr")}
        if any(report is None or not completed(report, key) for report in sweeps.values()):
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for (label, report), color in zip(sweeps.items(), ("tab:blue", "tab:red"), strict=True):
            assert report is not None
            for part, style, marker in (("val", "-", "o"), ("test", "--", "s")):
                x, y = curve(completed(report, key), key, "generic", part)
                ax.plot(x, y, style, marker=marker, color=color, label=f"{label} generic {part}")
            if report.get("chosen") is not None:
                chosen = report["chosen"]["params"][key]
                said = "chosen" if report.get("complete", True) else "best so far"
                ax.axvline(chosen, color=color, linestyle=":", label=f"{label} {said} on val")
        log_axis(ax, [t["params"][key] for r in sweeps.values() for t in completed(r, key)])
        ax.set(xlabel="learning rate", ylabel="top-1 % (round chosen on val)")
        ax.set_title(SETTINGS[setting]["title"], fontsize=9)
        ax.legend(fontsize=8)
        made[setting] = {"lr_plot": str(save_figure(fig, out / f"fed_sweep_{setting}_lr.png"))}
    return made


def knobs_plot(
    results: dict[str, dict[str, Any]], out: Path, keys: dict[str, str]
) -> dict[str, dict[str, str]]:
    """One panel per sweep of a setting (`keys`: each sweep's knob): generic and local accuracy
    on validation and on test against the knob, the chosen value marked; the curves behind
    every choice, side by side."""
    from trustvision.report.figures import plt, save_figure

    made: dict[str, dict[str, str]] = {}
    for setting, block in results.items():
        sweeps = {n: done for n, r in block.items() if (done := completed(r, keys[n]))}
        if not sweeps:
            continue
        columns = min(4, len(sweeps))
        rows = -(-len(sweeps) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3 * rows), squeeze=False)
        for ax in axes.flat[len(sweeps) :]:
            ax.set_axis_off()
        for ax, (name, done) in zip(axes.flat, sweeps.items(), strict=False):
            key = keys[name]
            for kind, color in (("generic", "tab:blue"), ("local", "tab:orange")):
                for part, style, marker in (("val", "-", "o"), ("test", "--", "s")):
                    x, y = curve(done, key, kind, part)
                    ax.plot(x, y, style, marker=marker, ms=3, color=color, label=f"{kind} {part}")
            if (chosen := block[name].get("chosen")) is not None:
                ax.axvline(chosen["params"][key], color="grey", linestyle=":")
            values = [t["params"][key] for t in done]
            if min(values) > 0 and max(values) >= 10 * min(values):
                log_axis(ax, values)
            unfinished = "" if block[name].get("complete", True) else " (unfinished)"
            ax.set_title(f"{name}: {key.rpartition('.')[2]}{unfinished}", fontsize=9)
            ax.tick_params(labelsize=7)
        axes.flat[0].set_ylabel("top-1 % (round chosen on val)", fontsize=8)
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(SETTINGS[setting]["title"], fontsize=10)
        path = save_figure(fig, out / f"fed_sweep_{setting}_knobs.png")
        made[setting] = {"knobs_plot": str(path)}
    return made


def validation_counts(
    results: dict[str, Any], asked: list[str], earlier: Path
) -> dict[str, list[int]]:
    """Validation images per class at the sweeps' seed 0: computed for the settings asked for,
    carried over from the earlier report for the others (whose data this machine may lack)."""
    before = json.loads(earlier.read_text()).get("meta", {}) if earlier.is_file() else {}
    return {
        setting: fed_validation_counts(setting, [0])[0]
        if setting in asked
        else before.get("validation_counts", {}).get(setting)
        for setting in results
    }
