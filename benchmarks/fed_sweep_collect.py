"""Finished sweeps of benchmarks/fed_sweep.py read back from their runs: every trial of a
sweep's stages with its numbers, whether the sweep is complete, and a method's choice over its
sweeps (written for benchmarks/fed_compare.py once its search is finished)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from fed_sweep_choice import rebuild_choice, write_choice
from fed_sweep_kept import search_finished
from fed_sweep_specs import (
    FOLLOW_UP,
    INHERITS_LR,
    KNOBS,
    follow_up_name,
    knob,
    second_stage,
    stage_dir,
)


def trial_numbers(out: Path, trial: dict[str, Any]) -> dict[str, Any]:
    """Final-round and validation-chosen numbers of one finished trial, from its run."""
    summary = json.loads((out / trial["run_dir"] / "summary.json").read_text())
    headline, selected = summary["headline"], summary.get("selected", {})
    row: dict[str, Any] = {"final": {}, "selected": {}}
    for key in ("generic_acc", "generic_val_acc", "local_acc", "local_val_acc", "universal_acc"):
        if key in headline:
            row["final"][key] = headline[key]
    for kind in ("generic", "local"):
        if kind in selected:
            pick = selected[kind]
            row["selected"][kind] = {
                "selected_by": pick["selected_by"],
                "round": pick["round"],
                "val": pick[f"{kind}_val_acc"],
                "test": pick[f"{kind}_acc"],
            }
    return row


def collect(runs: Path, setting: str, name: str) -> dict[str, Any] | None:
    """A sweep's trials over both stages, each with its numbers, and the choice among them
    (the best validation score, by the sweep's own choice function)."""
    from trustvision.sweep.choose import choose_trial

    trials, searches = [], {}
    tag = "lr." if name in {follow_up_name(a) for a in FOLLOW_UP} else ""
    for stage in (1, 2):
        out = stage_dir(runs, setting, name, stage)
        if not (out / "sweep.json").is_file():
            continue
        report = json.loads((out / "sweep.json").read_text())
        # what import_kept checks before a new machine continues this stage from the report
        searches[str(stage)] = {
            "spec": report["spec"],
            "config_sha256": report.get("config_sha256"),
        }
        for trial in report["trials"]:
            trial = {**trial, "stage": stage, "id": f"{tag}{stage}.{trial['number']}"}
            trial["sweep"] = str(out)
            imported = trial.pop("imported", None)  # kept by the report, its run gone
            if trial["state"] == "COMPLETE":
                trial["numbers"] = imported["numbers"] if imported else trial_numbers(out, trial)
            trials.append(trial)
    if not trials:
        return None
    scored = [(i, t["validation"]) for i, t in enumerate(trials) if t["state"] == "COMPLETE"]
    pick = choose_trial(scored, "maximize")
    chosen = None if pick is None else trials[pick]
    done = complete(runs, setting, name)
    return {
        **{"trials": trials, "chosen": chosen, "selected_by": "validation", "complete": done},
        "searches": searches,
    }


def complete(runs: Path, setting: str, name: str) -> bool:
    """Whether a sweep ran every trial of its grid and, where the grid chose a value to refine,
    of its second stage: only then may a report keep it in place of its runs. A trial that
    failed counts as run (a killed one is run again by the sweep itself)."""

    def sweep_report(stage: int) -> dict[str, Any] | None:
        path = stage_dir(runs, setting, name, stage) / "sweep.json"
        report = json.loads(path.read_text()) if path.is_file() else None
        return report if report and report["trials_done"] >= report["trials_planned"] else None

    first = sweep_report(1)
    if first is None:
        return False
    key = knob(name)[0]
    grid = sorted({trial["params"][key] for trial in first["trials"]})  # once each, if rerun
    refine = first["chosen"] is not None and second_stage(grid, first["chosen"]["params"][key])
    return not refine or sweep_report(2) is not None


def collect_method(runs: Path, setting: str, algorithm: str) -> dict[str, dict[str, Any]]:
    """A method's sweep and its follow-up's, by name; writes the method's choice, the best
    validation score over both (`final` marks the sweep it came from)."""
    from trustvision.sweep.choose import choose_trial

    reports: dict[str, dict[str, Any]] = {}
    first = collect(runs, setting, algorithm)
    if first is None:
        return reports
    reports[algorithm] = first
    if algorithm in INHERITS_LR:
        first["fixed"] = ran_at(first, "optim.lr")
    follow = collect(runs, setting, follow_up_name(algorithm)) if algorithm in FOLLOW_UP else None
    if follow is not None:
        reports[follow_up_name(algorithm)] = {
            **follow,
            "fixed": ran_at(follow, KNOBS[algorithm][0]),
        }
    done = [(n, r) for n, r in reports.items() if r["chosen"] is not None]
    pick = choose_trial(
        [(i, r["chosen"]["validation"]) for i, (_, r) in enumerate(done)], "maximize"
    )
    for i, (_, report) in enumerate(done):
        report["final"] = i == pick
    if pick is not None and search_finished(reports, algorithm):
        name, report = done[pick]
        if report["chosen"]["run_dir"] is None:  # measured before its runs were lost
            rebuild_choice(runs / setting, setting, name, report)
        else:
            write_choice(runs / setting, algorithm, report)
    else:  # a choice of an earlier, restarted search is not this one's
        for suffix in (".yaml", ".json"):
            (runs / setting / f"{algorithm}.chosen{suffix}").unlink(missing_ok=True)
    return reports


def ran_at(report: dict[str, Any], key: str) -> dict[str, Any]:
    """`{key: value}`, the value a sweep held `key` at (a follow-up its method's own knob, a
    method in INHERITS_LR FedAvg's learning rate), from that sweep's spec."""
    sweep_dir = (report["chosen"] or report["trials"][0])["sweep"]  # where the choice ran
    spec_file = Path(sweep_dir) / "spec.yaml"
    overrides = yaml.safe_load(spec_file.read_text())["overrides"]
    values = [yaml.safe_load(o.partition("=")[2]) for o in overrides if o.startswith(f"{key}=")]
    return {key: values[-1]} if values else {}
