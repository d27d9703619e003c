"""Tune every federated method on its own main knob, with the same budget, on validation only.

For each setting (data set x backbone) and algorithm this writes a sweep spec and runs
`trustvision sweep run` into `<runs>/<setting>/<algorithm>/` (seed 0, the setting's full
length): one trial per grid value, every method the same number of trials. Then a second
stage of two more trials for every method (`<algorithm>-stage2/`): beyond the grid's edge
where the best value sat at one, else halfway (geometrically) to each neighbour of the best;
the choice is the best validation score over both stages. FedLoGe then has its learning
rate swept the same way at the norm target chosen (`<algorithm>-lr/`, FOLLOW_UP), and its
config to compare is the best of both sweeps. A method whose own knob is not the learning
rate (INHERITS_LR) trains at the rate FedAvg's sweep chose on the same setting, which is
therefore swept first. A trial's score is the validation accuracy of the round that
validation picks: generic (class-balanced, on the clients' held-out images) for a method
with a global model, local (mean over clients) for one without (FedPer, FedRep). The test numbers are recorded beside it and never read.
A killed invocation continues where it stopped (the sweeps resume). Then writes
docs/results/fed-sweep.{md,json} and the FedLoGe norm-target curve beside the authors'.
`benchmarks/fed_compare.py` trains the chosen configs over more seeds.

    .venv/bin/python benchmarks/fed_sweep.py --settings fmnist-cnn --algorithms fedloge fedavg
    .venv/bin/python benchmarks/fed_sweep.py --parallel 2     # two sweeps at once, a core each
    .venv/bin/python benchmarks/fed_sweep.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from common import FED_SETTINGS as SETTINGS
from common import ROOT, write_results
from fed_sweep_report import lr_plot, markdown, norm_plot

from trustvision.files import write_atomic
from trustvision.sweep.trial import format_override

# Each method's own most important knob (the learning rate where it has none), 7 values each.
LR = [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2]
KNOBS: dict[str, tuple[str, list[float]]] = {
    "fedavg": ("optim.lr", LR),
    "fedprox": ("algorithm.options.mu", [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]),
    "fedper": ("optim.lr", LR),
    "fedrep": ("algorithm.options.head_epochs", [1, 2, 3, 4, 6, 8, 10]),
    "fedbabu": ("algorithm.options.finetune_epochs", [0, 1, 2, 3, 5, 8, 10]),
    "fedrod": ("optim.lr", LR),
    "fedetf": ("algorithm.options.temperature", [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]),
    "ditto": ("algorithm.options.lam", [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]),
    "fedlc": ("algorithm.options.tau", [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]),
    "fedloge": ("algorithm.options.norm_target", [0.05, 0.1, 0.2, 0.4, 1.0, 2.0, 4.0]),
}
# Then the learning rate, at the value validation chose for the method's own knob (one step of
# coordinate descent; the method then has had twice FedAvg's trials, which its reports say):
# FedAvg's rate moved from the config's 0.03 to 0.2 and 0.8, FedLoGe's stayed there.
FOLLOW_UP: dict[str, tuple[str, list[float]]] = {"fedloge": ("optim.lr", LR)}
# A method whose own knob is not the learning rate trains at the rate validation chose for
# FedAvg on the same setting (each trains locally with FedAvg's SGD): at the config's 0.03
# FedAvg's validation accuracy was 10 points below its chosen rate's on `gap_cnn`.
INHERITS_LR = {a for a, (key, _) in KNOBS.items() if key != "optim.lr" and a not in FOLLOW_UP}
NO_GENERIC = {"fedper", "fedrep"}


def objective(algorithm: str) -> tuple[str, str]:
    """The summary.json paths of a trial's validation score and of its test number."""
    kind = "local" if algorithm in NO_GENERIC else "generic"
    return f"selected.{kind}.{kind}_val_acc", f"selected.{kind}.{kind}_acc"


def follow_up_name(algorithm: str) -> str:
    """The directory and report name of a method's learning-rate follow-up sweep."""
    return f"{algorithm}-lr"


def sweep_name(algorithm: str, fixed: dict[str, Any] | None) -> str:
    """A method's own sweep, or with `fixed` (its own knob's chosen value) its follow-up."""
    return follow_up_name(algorithm) if fixed else algorithm


def knob(name: str) -> tuple[str, list[float]]:
    """The knob and first grid of a sweep, by name (a method or its follow-up)."""
    follow_ups = {follow_up_name(a): knob for a, knob in FOLLOW_UP.items()}
    return follow_ups[name] if name in follow_ups else KNOBS[name]


def spec(
    setting: str,
    algorithm: str,
    *,
    fixed: dict[str, Any] | None = None,
    inherited: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sweep spec of one (setting, algorithm), at the `inherited` values (FedAvg's chosen
    learning rate, `inherited_lr`); with `fixed` (the values validation chose for its own
    knob), the spec of its follow-up sweep."""
    key, grid = FOLLOW_UP[algorithm] if fixed else KNOBS[algorithm]
    metric, test = objective(algorithm)
    choice = [] if algorithm == "fedloge" else [f"algorithm={algorithm}"]
    if choice and KNOBS[algorithm][0].startswith("algorithm."):  # a section, not a name
        choice = [f"algorithm.name={algorithm}", "algorithm.options={}"]
    choice += [format_override(k, v) for k, v in {**(inherited or {}), **(fixed or {})}.items()]
    return {
        "name": f"{setting}-{sweep_name(algorithm, fixed)}",
        "command": "fed run",
        # relative, so that a sweep continues from any checkout (CIFAR-10's data source is not)
        "config": SETTINGS[setting]["config"],
        "overrides": [*SETTINGS[setting]["overrides"], *choice, "seed=0", "device=cpu"],
        "params": {key: {"grid": grid}},
        "objective": {"metric": metric, "direction": "maximize"},
        "test_metric": test,
        "seed": 0,
    }


def inherited_lr(runs: Path, setting: str, algorithm: str) -> dict[str, Any]:
    """`{"optim.lr": rate}`, the rate FedAvg's finished sweep chose on `setting`, for a method
    in INHERITS_LR; nothing for any other."""
    if algorithm not in INHERITS_LR:
        return {}
    report = collect(runs, setting, "fedavg")
    if report is None or report["chosen"] is None:
        raise SystemExit(
            f"{algorithm} trains at the learning rate FedAvg's sweep chooses on {setting}, "
            f"and {runs / setting / 'fedavg'} holds no finished trial: sweep fedavg first"
        )
    return {"optim.lr": report["chosen"]["params"]["optim.lr"]}


def second_stage(grid: list[float], best: float) -> list[float]:
    """Two more values: beyond the grid's edge where `best` sits at one (a step of the grid's
    ratio there), else the geometric midpoints between `best` and its neighbours. Fewer where
    whole numbers leave no new value (e.g. 1 epoch at the bottom of a grid of epochs)."""
    values = sorted(grid)
    i = values.index(best)
    if i == len(values) - 1 and values[-2] > 0:
        step = values[-1] / values[-2]
        new = [best * step, best * step**2]
    elif i == 0 and best > 0:
        step = values[1] / values[0]
        new = [best / step, best / step**2]
    else:
        neighbours = [values[max(i - 1, 0)], values[min(i + 1, len(values) - 1)]]
        new = [(n * best) ** 0.5 if n > 0 and best > 0 else (n + best) / 2 for n in neighbours]
    if all(isinstance(v, int) for v in values):  # counts: rounded, never below the grid's floor
        new = [round(v) for v in new if round(v) >= min(values[0], 1)]
    return [
        v
        for v in dict.fromkeys(float(f"{v:.4g}") if isinstance(v, float) else v for v in new)
        if v not in values
    ]


def stage_dir(runs: Path, setting: str, algorithm: str, stage: int) -> Path:
    """The sweep directory of a stage (1: the grid, 2: the refinement)."""
    return runs / setting / (algorithm if stage == 1 else f"{algorithm}-stage2")


def sweep(setting: str, algorithm: str, runs: Path) -> None:
    """Run (or continue, or just find) both stages of a method's sweep, then those of its
    follow-up at the value chosen over the first two."""
    stages(setting, algorithm, runs)
    if algorithm in FOLLOW_UP:
        report = collect(runs, setting, algorithm)
        if report is not None and report["chosen"] is not None:
            stages(setting, algorithm, runs, fixed=report["chosen"]["params"])


def stages(
    setting: str, algorithm: str, runs: Path, *, fixed: dict[str, Any] | None = None
) -> None:
    """The grid stage and, where it chose a value, the refining stage of one sweep."""
    name = sweep_name(algorithm, fixed)
    key, grid = knob(name)
    first = run_stage(setting, algorithm, runs, stage=1, grid=grid, fixed=fixed)
    chosen = json.loads((first / "sweep.json").read_text())["chosen"]
    if chosen is not None and (refined := second_stage(grid, chosen["params"][key])):
        run_stage(setting, algorithm, runs, stage=2, grid=refined, fixed=fixed)


def run_stage(
    setting: str,
    algorithm: str,
    runs: Path,
    *,
    stage: int,
    grid: list[float],
    fixed: dict[str, Any] | None = None,
) -> Path:
    """One stage's sweep over `grid`; returns its directory."""
    name = sweep_name(algorithm, fixed)
    out = stage_dir(runs, setting, name, stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    tree = spec(setting, algorithm, fixed=fixed, inherited=inherited_lr(runs, setting, algorithm))
    tree["params"] = {knob(name)[0]: {"grid": grid}}
    if stage == 2:
        tree["name"] += "-stage2"
    path = out.parent / f"{out.name}.yaml"  # beside the sweep: its directory is its own
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    print(f"[{time.strftime('%H:%M:%S')}] sweep {setting} {name} stage {stage}", flush=True)
    # One torch thread per trial: at batch 8 a second thread only waits (fed_compare.py).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "trustvision", "sweep", "run", str(path), "--out", str(out)]
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed with exit code {result.returncode}")
    return out


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

    trials = []
    tag = "lr." if name in {follow_up_name(a) for a in FOLLOW_UP} else ""
    for stage in (1, 2):
        out = stage_dir(runs, setting, name, stage)
        if not (out / "sweep.json").is_file():
            continue
        for trial in json.loads((out / "sweep.json").read_text())["trials"]:
            trial = {**trial, "stage": stage, "id": f"{tag}{stage}.{trial['number']}"}
            trial["sweep"] = str(out)
            if trial["state"] == "COMPLETE":
                trial["numbers"] = trial_numbers(out, trial)
            trials.append(trial)
    if not trials:
        return None
    scored = [(i, t["validation"]) for i, t in enumerate(trials) if t["state"] == "COMPLETE"]
    pick = choose_trial(scored, "maximize")
    chosen = None if pick is None else trials[pick]
    return {"trials": trials, "chosen": chosen, "selected_by": "validation"}


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
    done = [r for r in reports.values() if r["chosen"] is not None]
    pick = choose_trial([(i, r["chosen"]["validation"]) for i, r in enumerate(done)], "maximize")
    for i, report in enumerate(done):
        report["final"] = i == pick
    if pick is not None:
        write_choice(runs / setting, algorithm, done[pick])
    return reports


def ran_at(report: dict[str, Any], key: str) -> dict[str, Any]:
    """`{key: value}`, the value a sweep held `key` at (a follow-up its method's own knob, a
    method in INHERITS_LR FedAvg's learning rate), from that sweep's spec."""
    sweep_dir = (report["chosen"] or report["trials"][0])["sweep"]  # where the choice ran
    spec_file = Path(sweep_dir) / "spec.yaml"
    overrides = yaml.safe_load(spec_file.read_text())["overrides"]
    values = [yaml.safe_load(o.partition("=")[2]) for o in overrides if o.startswith(f"{key}=")]
    return {key: values[-1]} if values else {}


def write_choice(folder: Path, algorithm: str, report: dict[str, Any]) -> None:
    """`<algorithm>.chosen.yaml` (the chosen trial's config, to train again) and `.json` (its
    run and every knob validation set), which benchmarks/fed_compare.py reads."""
    chosen = report["chosen"]
    sweep = Path(chosen["sweep"])
    config = yaml.safe_load((sweep / chosen["run_dir"] / "config.yaml").read_text())
    config["runs_dir"] = "runs"
    header = (
        f"# {algorithm}: trial {chosen['id']} ([lr.]stage.trial: the learning-rate follow-up's "
        f"trials begin with lr.) of {sweep}, chosen on validation\n"
    )
    write_atomic(
        folder / f"{algorithm}.chosen.yaml", header + yaml.safe_dump(config, sort_keys=False)
    )
    run = {
        "run_dir": str(sweep / chosen["run_dir"]),
        "params": {**report.get("fixed", {}), **chosen["params"]},
        "id": chosen["id"],
    }
    write_atomic(folder / f"{algorithm}.chosen.json", json.dumps(run, indent=2) + "\n")


def main() -> None:
    from trustvision.runs import machine_summary

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--algorithms", nargs="+", default=list(KNOBS), choices=list(KNOBS))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/fed-sweep")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results")
    parser.add_argument("--parallel", type=int, default=1, help="sweeps at once, a core each")
    parser.add_argument("--report-only", action="store_true", help="report finished sweeps")
    args = parser.parse_args()
    jobs = [(s, a) for s in args.settings for a in args.algorithms]
    if not args.report_only:
        first = list(dict.fromkeys(s for s, a in jobs if a in INHERITS_LR))
        for setting in first:  # the rate they inherit (found, if finished): before the rest
            sweep(setting, "fedavg", args.runs)
        rest = [(s, a) for s, a in jobs if not (a == "fedavg" and s in first)]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(lambda job: sweep(*job, args.runs), rest))
    results: dict[str, dict[str, Any]] = {}
    for setting, algorithm in jobs:
        for name, report in collect_method(args.runs, setting, algorithm).items():
            results.setdefault(setting, {})[name] = report
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/fed_sweep.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_summary(),
        "knobs": {a: {"key": k, "grid": g} for a, (k, g) in KNOBS.items()},
        "follow_ups": {follow_up_name(a): {"key": k, "grid": g} for a, (k, g) in FOLLOW_UP.items()},
        "inherit_lr": [
            a
            for a in args.algorithms
            if a in INHERITS_LR and any(a in block for block in results.values())
        ],
        "selected_by": "validation",
    }
    meta["plots"] = norm_plot(results, args.out, KNOBS["fedloge"][0])
    for setting, made in lr_plot(results, args.out, FOLLOW_UP["fedloge"][0]).items():
        meta["plots"].setdefault(setting, {}).update(made)
    meta["follow_ups_run"] = any(
        n in block for block in results.values() for n in meta["follow_ups"]
    )
    body = {"meta": meta, "results": results}
    print(f"wrote {write_results('fed-sweep', markdown(results, meta), body, out=args.out)}")


if __name__ == "__main__":
    main()
