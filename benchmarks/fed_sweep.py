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
with a global model its knob changes, local (mean over clients) for the others (FedPer and
FedRep, without one; Ditto and FedBABU, whose knob acts on the personal model only). The test
numbers are recorded beside it and never read. Only a finished search writes a choice (a
restarted search's old choice is removed). A killed invocation continues where it
stopped (the sweeps resume). A complete sweep in the committed report whose runs are gone (a
new machine) is kept from it rather than swept again, and once all of the method's sweeps
(its follow-up's too) are complete its chosen config is rebuilt from its spec for fed_compare
(delete the report to redo it); an unfinished one continues from the trials the report kept
of it, running only its grid's other points (benchmarks/fed_sweep_kept.py). Then writes
docs/results/fed-sweep.{md,json} and the FedLoGe norm-target curve beside the authors'.
`benchmarks/fed_compare.py` trains the chosen configs over seeds 1-3, never seed 0, on which
they were chosen. Ctrl-C (SIGINT to this process alone will do) stops the running sweeps as
`sweep run` stops, their reports written, and starts no other; running it again continues.

    .venv/bin/python benchmarks/fed_sweep.py --settings fmnist-cnn --algorithms fedloge fedavg
    .venv/bin/python benchmarks/fed_sweep.py --parallel 2     # two sweeps at once, a core each
    .venv/bin/python benchmarks/fed_sweep.py --settings cifar10 --jobs 2  # two trials at once
    .venv/bin/python benchmarks/fed_sweep.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from common import FED_SETTINGS as SETTINGS
from common import (
    ROOT,
    absolute,
    run_script,
    write_results,
)
from fed_sweep_collect import collect, collect_method
from fed_sweep_kept import (
    import_kept,
    kept_results,
    only_kept,
    with_kept,
)
from fed_sweep_report import knobs_plot, lr_plot, markdown, norm_plot, validation_counts
from fed_sweep_specs import (
    FOLLOW_UP,
    INHERITS_LR,
    KNOBS,
    follow_up_name,
    knob,
    method_of,
    second_stage,
    spec,
    stage_dir,
    sweep_name,
)
from processes import run_child, run_in_parallel


def inherited_lr(runs: Path, setting: str, algorithm: str, earlier: Path) -> dict[str, Any]:
    """`{"optim.lr": rate}`, the rate FedAvg's finished sweep chose on `setting` (in `runs`, else
    in the earlier report), for a method in INHERITS_LR; nothing for any other."""
    if algorithm not in INHERITS_LR:
        return {}
    report = collect(runs, setting, "fedavg") or kept_results(earlier).get(setting, {}).get(
        "fedavg"
    )
    if report is None or report["chosen"] is None or not report.get("complete", True):
        raise SystemExit(
            f"{algorithm} trains at the learning rate FedAvg's sweep chooses on {setting}, "
            f"and neither {runs / setting / 'fedavg'} nor {earlier} holds a finished sweep: "
            "sweep fedavg first"
        )
    return {"optim.lr": report["chosen"]["params"]["optim.lr"]}


def sweep(setting: str, algorithm: str, runs: Path, earlier: Path, *, jobs: int = 1) -> None:
    """Run (or continue, or just find) both stages of a method's sweep, then those of its
    follow-up at the value chosen over the first two, `jobs` trials at once; `earlier`: the
    report that stands in for runs that are gone."""
    stages(setting, algorithm, runs, earlier, jobs=jobs)
    if algorithm in FOLLOW_UP:
        report = collect(runs, setting, algorithm)
        if report is not None and report["chosen"] is not None:
            fixed = report["chosen"]["params"]
            stages(setting, algorithm, runs, earlier, fixed=fixed, jobs=jobs)


def stages(
    setting: str,
    algorithm: str,
    runs: Path,
    earlier: Path,
    *,
    fixed: dict[str, Any] | None = None,
    jobs: int = 1,
) -> None:
    """The grid stage and, where it chose a value, the refining stage of one sweep."""
    name = sweep_name(algorithm, fixed)
    key, grid = knob(name)
    first = write_stage_spec(setting, algorithm, runs, earlier, stage=1, grid=grid, fixed=fixed)
    run_stage(first, earlier, jobs=jobs)
    chosen = json.loads((first.out / "sweep.json").read_text())["chosen"]
    if chosen is not None and (refined := second_stage(grid, chosen["params"][key])):
        second = write_stage_spec(
            setting, algorithm, runs, earlier, stage=2, grid=refined, fixed=fixed
        )
        run_stage(second, earlier, jobs=jobs)


class StageSpec(NamedTuple):
    """A stage's sweep spec, written: the sweep it belongs to, where it sweeps, its spec file
    and the values it holds fixed (a follow-up's method knob, an inherited learning rate)."""

    setting: str
    name: str
    stage: int
    out: Path
    path: Path
    held: dict[str, Any]


def run_stage(stage: StageSpec, earlier: Path, *, jobs: int = 1) -> None:
    """One stage's sweep, `jobs` trials at once, begun with the trials the earlier report kept
    of it where its runs are gone."""
    setting, name, number, out, path, held = stage
    print(f"[{time.strftime('%H:%M:%S')}] sweep {setting} {name} stage {number}", flush=True)
    import_kept(earlier, setting, name, stage=number, out=out, spec_path=path, fixed=held)
    # One torch thread per trial: at batch 8 a second thread only waits (fed_compare.py).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "trustvision", "sweep", "run", str(path), "--out", str(out)]
    command += ["--jobs", str(jobs)]
    returncode = run_child(command, env=env)
    if returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed with exit code {returncode}")


def write_stage_spec(
    setting: str,
    algorithm: str,
    runs: Path,
    earlier: Path,
    *,
    stage: int,
    grid: list[float],
    fixed: dict[str, Any] | None = None,
) -> StageSpec:
    """Write the sweep spec of one stage beside its directory."""
    name = sweep_name(algorithm, fixed)
    out = stage_dir(runs, setting, name, stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    inherited = inherited_lr(runs, setting, algorithm, earlier)
    tree = spec(setting, algorithm, fixed=fixed, inherited=inherited)
    tree["params"] = {knob(name)[0]: {"grid": grid}}
    if stage == 2:
        tree["name"] += "-stage2"
    path = out.parent / f"{out.name}.yaml"  # beside the sweep: its directory is its own
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return StageSpec(setting, name, stage, out, path, {**(fixed or {}), **inherited})


def sweep_all(
    jobs: list[tuple[str, str]],
    kept: dict[str, dict[str, Any]],
    runs: Path,
    earlier: Path,
    *,
    parallel: int,
    trials: int,
) -> None:
    """Run (or continue) the sweep of every (setting, method) the earlier report does not
    keep, `parallel` at once and `trials` trials of each at once; FedAvg's first where a
    method inherits its learning rate."""
    first = list(dict.fromkeys(s for s, a in jobs if a in INHERITS_LR))
    run_in_parallel(
        [
            partial(sweep, setting, "fedavg", runs, earlier, jobs=trials)
            for setting in first
            if not only_kept(kept, runs, setting, "fedavg")
        ],
        workers=1,
    )
    rest = [
        partial(sweep, s, a, runs, earlier, jobs=trials)
        for s, a in jobs
        if not (a == "fedavg" and s in first) and not only_kept(kept, runs, s, a)
    ]
    run_in_parallel(rest, workers=parallel)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--algorithms",
        nargs="+",
        choices=list(KNOBS),
        help="of each setting's methods (all ten on Fashion-MNIST, fedavg and fedloge on "
        "CIFAR-10), only these (default: all of them)",
    )
    parser.add_argument("--runs", type=absolute, default=ROOT / "runs/fed-sweep")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results")
    parser.add_argument("--parallel", type=int, default=1, help="sweeps at once")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trials of each sweep at once (`sweep run --jobs`), one thread each: parallel x "
        "jobs trials share the cores; a sweep killed and run again may take another number",
    )
    parser.add_argument("--report-only", action="store_true", help="report finished sweeps")
    args = parser.parse_args()
    if min(args.parallel, args.jobs) < 1:
        parser.error("--parallel and --jobs take a whole number of at least 1")
    if not jobs_of(args):
        parser.error(f"none of {args.algorithms} is swept on {', '.join(args.settings)}")
    return args


def jobs_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Every (setting, method) asked for: each setting's methods (`--algorithms` picks among
    them)."""
    return [
        (s, a)
        for s in args.settings
        for a in SETTINGS[s].get("algorithms", list(KNOBS))
        if args.algorithms is None or a in args.algorithms
    ]


def main() -> None:
    from trustvision.runs import machine_summary

    args = parse_args()
    jobs = jobs_of(args)
    earlier = args.out / "fed-sweep.json"  # stands in for the runs that are gone
    kept = kept_results(earlier)
    if not args.report_only:
        sweep_all(jobs, kept, args.runs, earlier, parallel=args.parallel, trials=args.jobs)
        kept = kept_results(earlier)  # another fed_sweep may have written it since
    # the methods asked for, then the report's others (from their runs, where they are here)
    others = sorted({(s, method_of(n)) for s, block in kept.items() for n in block} - set(jobs))
    results: dict[str, dict[str, Any]] = {}
    for setting, algorithm in [*jobs, *others]:
        for name, report in collect_method(args.runs, setting, algorithm).items():
            results.setdefault(setting, {})[name] = report
    results = with_kept(results, kept, args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/fed_sweep.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_summary(),
        "knobs": {a: {"key": k, "grid": g} for a, (k, g) in KNOBS.items()},
        "follow_ups": {follow_up_name(a): {"key": k, "grid": g} for a, (k, g) in FOLLOW_UP.items()},
        "inherit_lr": [
            a
            for a in KNOBS  # every reported method, the kept ones too
            if a in INHERITS_LR and any(a in block for block in results.values())
        ],
        "selected_by": "validation",
        "validation_counts": validation_counts(results, args.settings, earlier),
    }
    meta["plots"] = norm_plot(results, args.out, KNOBS["fedloge"][0])
    keys = {n: knob["key"] for n, knob in {**meta["knobs"], **meta["follow_ups"]}.items()}
    for plots in (
        lr_plot(results, args.out, FOLLOW_UP["fedloge"][0]),
        knobs_plot(results, args.out, keys),
    ):
        for setting, made in plots.items():
            meta["plots"].setdefault(setting, {}).update(made)
    meta["follow_ups_run"] = any(
        n in block for block in results.values() for n in meta["follow_ups"]
    )
    body = {"meta": meta, "results": results}
    print(f"wrote {write_results('fed-sweep', markdown(results, meta), body, out=args.out)}")


if __name__ == "__main__":
    run_script(main)
