"""What a sweep leaves behind: sweep.json, sweep.md, sweep.png and chosen.yaml, from the study."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from trustvision.config import dump_yaml, read_yaml
from trustvision.errors import ConfigError
from trustvision.files import write_atomic
from trustvision.report.figures import plt, save_figure
from trustvision.sweep.choose import choose_trial
from trustvision.sweep.spec import SweepSpec, dump_spec
from trustvision.sweep.study import (
    CONFIG_DIGEST_FILE,
    counted_trials,
    load_study,
    read_saved_spec,
    retry_history,
)

CHOSEN_FILE = "chosen.yaml"


def trial_record(
    trial: FrozenTrial, spec: SweepSpec, *, rerun_as: int | None = None
) -> dict[str, Any]:
    """One trial as plain data: state, parameters, both metrics, time, run directory, notes."""
    complete = trial.state == TrialState.COMPLETE
    test = trial.user_attrs.get(spec.test_metric) if spec.test_metric and complete else None
    history = retry_history(trial)
    notes = [f"re-run of killed trial {history[0]}"] if history else []
    if rerun_as is not None:
        notes.append(f"killed; re-run as trial {rerun_as}")
    elif trial.state == TrialState.FAIL and trial.user_attrs.get("error"):
        notes.append(failure_note(trial.user_attrs))
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        notes.append(f"pruned after {spec.prune.step if spec.prune else 'step'} {step}")
    imported = trial.user_attrs.get("imported")
    if imported:
        notes.append(f"measured earlier (trial {imported['number']} of {imported['from']})")
    record = {
        "number": trial.number,
        "state": trial.state.name,
        "params": trial.params,
        "validation": _finite(trial.value) if complete else None,
        "test": _finite(test),
        "seconds": trial.user_attrs.get("seconds"),
        "run_dir": trial.user_attrs.get("run_dir"),
        "note": "; ".join(notes),
    }
    if imported:
        record["imported"] = imported
    return record


def failure_note(attrs: dict[str, Any]) -> str:
    """Why a trial failed: how its command exited and, where its log holds the one-line error
    the command printed, that error's first clause (the cause, before the advice)."""
    error = str(attrs["error"])
    _, found, said = str(attrs.get("log_tail", "")).rpartition("error: ")
    return f"{error}: {' '.join(said.split()).split('; ')[0]}" if found else error


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def build_report(
    spec: SweepSpec, trials: list[FrozenTrial], study_attrs: dict[str, Any]
) -> dict[str, Any]:
    """The sweep's results as plain data (sweep.json); the choice reads validation values only."""
    rerun_as = {}
    for trial in trials:
        history = retry_history(trial)
        if history:
            rerun_as[history[-1]] = trial.number
    records = [trial_record(t, spec, rerun_as=rerun_as.get(t.number)) for t in trials]
    validation = [(r["number"], r["validation"]) for r in records if r["validation"] is not None]
    chosen_number = choose_trial(validation, spec.objective.direction)
    chosen = next((r for r in records if r["number"] == chosen_number), None)
    states = [t.state.name for t in counted_trials(trials)]
    return {
        "name": spec.name,
        "selected_by": "validation",
        "objective": spec.objective.model_dump(),
        "test_metric": spec.test_metric,
        "sampler": "GridSampler" if spec.is_grid else "TPESampler",
        "trials_planned": spec.planned_trials,
        "trials_done": len(states),
        "states": {state: states.count(state) for state in sorted(set(states))},
        "chosen": chosen,
        "trials": records,
        "machine": study_attrs.get("machine"),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "spec": dump_spec(spec),
    }


def write_report(out: Path) -> dict[str, Any]:
    """Rewrite sweep.json, sweep.md, sweep.png and chosen.yaml in `out` from its study."""
    spec = read_saved_spec(out)
    study = load_study(spec, out)
    report = build_report(spec, study.get_trials(deepcopy=False), study.user_attrs)
    digest = out / CONFIG_DIGEST_FILE  # what --continue-from checks on another machine
    report["config_sha256"] = digest.read_text().strip() if digest.is_file() else None
    chosen = report["chosen"]
    if chosen is not None and "imported" in chosen:  # measured earlier: its run is elsewhere
        (out / CHOSEN_FILE).unlink(missing_ok=True)
        chosen["config"] = None
    elif chosen is not None:
        chosen["config"] = str(write_chosen_config(out, spec, chosen))
    # whole files or none: a running sweep rewrites them after every trial while others read
    write_atomic(out / "sweep.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / "sweep.md", render_markdown(report, spec, out))
    plot_sweep(report, spec, out / "sweep.png")
    return report


def write_chosen_config(out: Path, spec: SweepSpec, chosen: dict[str, Any]) -> Path:
    """The chosen trial's resolved config.yaml with `runs_dir: runs`, ready to train again."""
    source = out / str(chosen["run_dir"]) / "config.yaml"
    if chosen["run_dir"] is None or not source.is_file():
        raise ConfigError(
            f"the chosen trial {chosen['number']}'s run directory `{chosen['run_dir']}` has no "
            "config.yaml: was it moved or deleted?"
        )
    config = read_yaml(source)
    config["runs_dir"] = "runs"
    path = out / CHOSEN_FILE
    header = (
        f"# Sweep `{spec.name}`: trial {chosen['number']}, chosen on validation "
        f"(`{spec.objective.metric}`, {spec.objective.direction}).\n"
        f"# Train it again: trustvision {spec.command} {path} seed=1\n"
    )
    write_atomic(path, header + dump_yaml(config, sort_keys=False))
    return path


def _value(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def render_markdown(report: dict[str, Any], spec: SweepSpec, out: Path) -> str:
    """sweep.md: how the choice was made, every trial, the chosen one and the spec."""
    objective, test = spec.objective, spec.test_metric
    keys = list(spec.params)
    lines = [
        f"# Sweep `{spec.name}`",
        "",
        f"`trustvision {spec.command} {spec.config} {' '.join(spec.overrides)}` with "
        f"{', '.join(f'`{k}`' for k in keys)} searched by Optuna's {report['sampler']} "
        f"(seed {spec.seed}): {report['trials_done']} of {report['trials_planned']} trials done.",
        "",
        f"**selected_by: validation.** The chosen trial has the best `{objective.metric}` "
        f"({objective.direction}); ties go to the lowest trial number."
        + (f" `{test}` is recorded, never read by the choice." if test else ""),
        "",
        f"Machine: {report['machine'] or 'unknown'}. Report written {report['date']}.",
        "",
        "| trial | state | "
        + " | ".join(f"`{k}`" for k in keys)
        + f" | validation (`{objective.metric}`) | test (`{test or '-'}`) | seconds | run directory | note |",
        "|" + "---|" * (len(keys) + 7),
    ]
    for r in report["trials"]:
        params = [_value(r["params"].get(k)) for k in keys]
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        mark = (
            " **(chosen)**"
            if report["chosen"] and r["number"] == report["chosen"]["number"]
            else ""
        )
        lines.append(
            f"| {r['number']}{mark} | {r['state']} | {' | '.join(params)} | "
            f"{_number(r['validation'])} | {_number(r['test'])} | {seconds} | "
            f"{r['run_dir'] or ''} | {r['note']} |"
        )
    lines.append("")
    chosen = report["chosen"]
    if chosen is None:
        lines.append("No trial completed: nothing is chosen.")
    else:
        chosen_params = ", ".join(f"`{k}={_value(v)}`" for k, v in chosen["params"].items())
        lines.append(
            f"**Chosen: trial {chosen['number']}** ({chosen_params}): validation "
            f"{_number(chosen['validation'])}"
            + (f", test {_number(chosen['test'])}" if test else "")
            + (
                f". Train it again: `trustvision {spec.command} {out / CHOSEN_FILE} seed=1`."
                if chosen.get("config")
                else f"; {chosen['note']}: its run is not here, so there is no {CHOSEN_FILE}."
            )
        )
    lines += ["", "![sweep](sweep.png)", "", "## Spec", "", "```yaml"]
    lines += [dump_yaml(report["spec"], sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def plot_sweep(report: dict[str, Any], spec: SweepSpec, path: Path) -> Path:
    """Validation and test metric against the one numeric parameter, else against trial number."""
    done = [r for r in report["trials"] if r["validation"] is not None]
    (key, param), single = next(iter(spec.params.items())), len(spec.params) == 1
    by_param = single and param.numeric

    def x_of(record: dict[str, Any]) -> float:
        return float(record["params"][key]) if by_param else float(record["number"])

    done.sort(key=x_of)
    fig, ax = plt.subplots(figsize=(7, 4))
    style = "o-" if by_param else "o"
    ax.plot(
        [x_of(r) for r in done],
        [r["validation"] for r in done],
        style,
        label=f"validation: {spec.objective.metric}",
    )
    tested = [r for r in done if r["test"] is not None]
    if tested:
        ax.plot(
            [x_of(r) for r in tested],
            [r["test"] for r in tested],
            "s--" if by_param else "s",
            color="tab:orange",
            label=f"test: {spec.test_metric}",
        )
    chosen = report["chosen"]
    if chosen is not None:
        ax.plot(
            [x_of(chosen)],
            [chosen["validation"]],
            "*",
            color="tab:red",
            markersize=18,
            label="chosen (on validation)",
        )
    if by_param and param.log_scale:
        ax.set_xscale("log")
    if not by_param:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=key if by_param else "trial", ylabel="metric", title=f"sweep {spec.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
