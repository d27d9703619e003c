"""`trustvision fed compare`: finished runs side by side, as a table and two plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustvision.config import flatten, read_yaml
from trustvision.errors import ConfigError
from trustvision.federated.algorithm import reported_modes
from trustvision.runs import RunDir

# The test number of each round chosen on validation (summary.json's `selected`).
SELECTED = {"generic": "generic_acc", "local": "local_acc"}


def columns() -> dict[str, str]:
    """The final round's numbers compared, key -> header: generic, every algorithm's further
    global predictors (`modes`), local masked and not, and generic by frequency group."""
    modes = {f"{name}_acc": label for name, label in reported_modes().items()}
    return {
        "generic_acc": "generic",
        **modes,
        "local_acc_masked": "local (masked)",
        "local_acc_unmasked": "local (unmasked)",
        "generic_head": "generic head",
        "generic_middle": "generic middle",
        "generic_tail": "generic tail",
    }


# What must be the same for runs to be compared: the data each trained and was tested on.
SETTING = (
    *("data.name", "data.imbalance_factor", "data.validation", "data.train_subset"),
    *("data.test_subset", "num_clients", "alpha"),
)


def finished_runs(paths: Sequence[Path]) -> dict[str, RunDir]:
    """Label -> finished run. A path is a run directory, a sweep directory (its trial chosen on
    validation, `trustvision sweep`, once the sweep is finished), or a directory of runs (the
    newest finished run of each algorithm, options and model in it). Runs of another data
    setting are refused. Labels are algorithm names ([model] where models differ), unique."""
    chosen: dict[Path, RunDir] = {}  # each run once, however often it is named
    for path in paths:
        for run in named_runs(path):
            chosen.setdefault(run.path.resolve(), run)
    runs = list(chosen.values())
    check_same_setting(runs)
    models = {run.path: _model(run) for run in runs}
    labelled: dict[str, RunDir] = {}
    for run in runs:
        base = run.read_summary()["algorithm"]
        base += f" [{models[run.path]}]" if len(set(models.values())) > 1 else ""
        labels = (base, f"{base} ({run.path.name})", f"{base} ({run.path})")
        labelled[next(label for label in labels if label not in labelled)] = run
    return labelled


def named_runs(path: Path) -> list[RunDir]:
    """The finished runs a path names (see `finished_runs`); an unfinished one is an error."""
    if (path / "sweep.json").is_file():
        path = sweep_choice(path)
    if (path / "config.yaml").is_file():
        run = RunDir.open(path)
        status = _status(run)
        if status != "finished":
            raise ConfigError(
                f"run `{path}` has not finished ({status}): resume it with "
                f"`trustvision fed run --resume {path}`"
                if status == "no summary.json yet"
                else f"run `{path}` has not finished: its status is `{status}`"
            )
        return [run]
    if not path.is_dir():
        raise ConfigError(f"`{path}` is neither a run directory nor a directory of runs")
    newest: dict[str, RunDir] = {}
    for config_path in sorted(path.glob("*/config.yaml"), key=lambda p: p.stat().st_mtime):
        run = RunDir.open(config_path.parent)
        if run.finished:  # oldest first: the newest of each algorithm and model wins
            config = _config(run)
            newest[json.dumps([config.get("algorithm"), config.get("model")])] = run
    if not newest:
        raise ConfigError(f"`{path}` holds no finished federated run")
    return list(newest.values())


def check_same_setting(runs: list[RunDir]) -> None:
    """ConfigError naming the runs whose data setting differs from the first's."""
    first = _setting(runs[0])
    for run in runs[1:]:
        setting = _setting(run)
        differ = [k for k in SETTING if setting[k] != first[k]]
        if differ:
            shown = ", ".join(f"`{k}` {first[k]!r} vs {setting[k]!r}" for k in differ)
            raise ConfigError(
                f"`{run.path}` trained on another setting than `{runs[0].path}` ({shown}): "
                "compare runs of one data setting"
            )


def _config(run: RunDir) -> dict[str, Any]:
    return read_yaml(run.config_path)


def _setting(run: RunDir) -> dict[str, Any]:
    flat = flatten(_config(run))
    return {key: flat.get(key) for key in SETTING}


def _model(run: RunDir) -> str:
    model = _config(run).get("model", {})
    kwargs = model.get("kwargs") or {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    return f"{model.get('name')}({shown})" if shown else str(model.get("name"))


def sweep_choice(sweep: Path) -> Path:
    """The run directory of a finished sweep's chosen trial (chosen on validation)."""
    report = json.loads((sweep / "sweep.json").read_text())
    if report.get("chosen") is None:
        raise ConfigError(
            f"sweep `{sweep}` has no chosen trial yet: finish it with `trustvision sweep run`"
        )
    done, planned = report.get("trials_done", 0), report.get("trials_planned", 0)
    if done < planned:
        raise ConfigError(
            f"sweep `{sweep}` has finished {done} of its {planned} trials, so its choice is not "
            "final: finish it with `trustvision sweep run`, or compare the run directory of "
            "the trial you mean"
        )
    chosen = report["chosen"]
    if chosen["run_dir"] is None:
        raise ConfigError(
            f"sweep `{sweep}` chose trial {chosen['number']} ({chosen['note']}), whose run is not "
            f"here: train its parameters {chosen['params']} again and compare that run"
        )
    return sweep / str(chosen["run_dir"])


def comparison(runs: dict[str, RunDir]) -> list[dict[str, Any]]:
    """One row per run: its final-round accuracies, the rounds validation chose (generic and
    local) with their test accuracies, rounds and path."""
    rows = []
    for label, run in runs.items():
        summary = run.read_summary()
        headline = summary.get("headline", {})
        rows.append(
            {
                "label": label,
                **{key: headline.get(key, math.nan) for key in columns()},
                "selected": summary.get("selected", {}),
                "rounds": summary.get("rounds"),
                "run": str(run.path),
            }
        )
    return rows


def comparison_plots(runs: dict[str, RunDir], out: Path) -> list[Path]:
    """Accuracy per round (one line per run) and generic per-class accuracy vs frequency."""
    from trustvision.federated.plots import plot_class_frequency, plot_methods_per_round

    made = [
        plot_methods_per_round(
            {label: run.read_metrics() for label, run in runs.items()},
            out / "accuracy_per_round.png",
        )
    ]
    summaries = {label: run.read_summary() for label, run in runs.items()}
    per_class = {
        label: s["final"]["generic"]["generic"]["per_class"]
        for label, s in summaries.items()
        if "generic" in s.get("final", {}).get("generic", {})
    }
    counts = next(iter(summaries.values())).get("data", {}).get("train_counts")
    if per_class and counts:
        classes = [str(c) for c in range(len(counts))]
        made.append(
            plot_class_frequency(
                per_class, counts=counts, classes=classes, path=out / "per_class_vs_frequency.png"
            )
        )
    return made


def _status(run: RunDir) -> str:
    return str(run.read_summary().get("status", "no summary.json yet"))
