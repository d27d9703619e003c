"""Federated algorithms side by side on the CPU-scale long-tailed settings, over seeds.

Trains every (setting, algorithm, seed) with `trustvision fed run` into
`<runs>/<setting>/<algorithm>/seed<k>/`; a finished run is read back, an interrupted one is
resumed from its last checkpoint, so running the command again continues where it stopped
(Ctrl-C, or SIGINT to this process alone, stops the running trainings and starts no other).
Where benchmarks/fed_sweep.py tuned the method (`<sweeps>/<setting>/<algorithm>.chosen.yaml`),
the run trains that validation-chosen config; otherwise the setting's config with the method's
defaults (said when it starts and in the report). The default seeds are never the sweeps' seed
0 (`--seeds 0` is refused where a method is tuned): the chosen trial won on its validation
images among 9 or 18 trials, so its test numbers would be optimistic, the more so the more
trials a method had. Overrides of a chosen config are refused: the result would be a config no
sweep chose; so is a method whose sweep has begun and chosen nothing (its defaults are no
choice). Then writes docs/results/federated.{md,json}: generic and local accuracy (mean +-
std over seeds) at the final round and at the round validation picks, the validation
accuracies, FedLoGe's universal SSE-C accuracy, head/middle/tail, seconds per round, FedLoGe
minus every other method (the spread marked), FedLoGe minus each rival seed by seed (one seed
gives every method the same partition, client sampling and validation images), the authors'
numbers beside them, and two plots per setting (accuracy per round, per-class accuracy against
training frequency). No number is chosen by test accuracy. What the earlier report measured and
this invocation finds no run of (a new machine, a setting not asked for) is kept from it,
marked, and a seed it holds of the config chosen now is not trained again.

    .venv/bin/python benchmarks/fed_compare.py                          # everything (hours)
    .venv/bin/python benchmarks/fed_compare.py --settings fmnist-cnn --seeds 1 \\
        --algorithms fedavg fedloge
    .venv/bin/python benchmarks/fed_compare.py --jobs 4     # four runs at once (four cores)
    .venv/bin/python benchmarks/fed_compare.py --report-only  # rewrite the docs, train nothing
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from common import FED_SETTINGS as SETTINGS
from common import (
    ROOT,
    absolute,
    fed_validation_counts,
    run_script,
    write_results,
)
from fed_compare_kept import (
    Job,
    chosen_config,
    config_digest,
    kept_jobs,
    read_report,
    reported_rows,
    stands_in,
    with_kept,
)
from fed_compare_numbers import numbers, paired, summarise
from fed_compare_report import markdown, plots
from fed_sweep_specs import stage_dir
from processes import run_child, run_in_parallel

from trustvision.runs import RunDir

ALGORITHMS = [
    "fedavg",
    "fedprox",
    "fedper",
    "fedrep",
    "fedbabu",
    "fedrod",
    "fedetf",
    "ditto",
    "fedlc",
    "fedloge",
]
SWEEP_SEED = 0  # the seed benchmarks/fed_sweep.py chooses on; never a compared one


def trustvision() -> list[str]:
    """The `trustvision` console script of this interpreter's environment, or `python -m`."""
    script = Path(sys.executable).parent / "trustvision"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trustvision"]


def runs_of(directory: Path, expected: dict[str, Any]) -> list[Path]:
    """The runs under `directory` begun with the `expected` config (but for their seed and runs
    folder), oldest first: a seed trained for an earlier choice, or with other overrides, is
    not this job's."""
    runs = [p.parent for p in sorted(directory.glob("*/config.yaml"))]
    return [
        r for r in runs if same_config(yaml.safe_load((r / "config.yaml").read_text()), expected)
    ]


def same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two run configs are equal but for their seed, runs folder and where their
    files lie (`config_digest`)."""
    return config_digest(a) == config_digest(b)


def finished_run(directory: Path, expected: dict[str, Any]) -> Path | None:
    """The finished run under `directory` begun with the `expected` config, if any."""
    return next((run for run in runs_of(directory, expected) if RunDir(run).finished), None)


def expected_config(setting: str, algorithm: str, sweeps: Path, extra: list[str]) -> dict[str, Any]:
    """The config a job's run trains: the validation-chosen one, or the setting's config with
    the method's defaults and the `extra` overrides (refused for a chosen one)."""
    from trustvision.config import dump_config, load_config
    from trustvision.federated.config import FedConfig

    chosen = chosen_config(sweeps, setting, algorithm)
    if chosen is not None:
        return yaml.safe_load(chosen.read_text())
    config, *overrides = defaults_args(setting, algorithm)
    return yaml.safe_load(dump_config(load_config(FedConfig, config, [*overrides, *extra])))


def defaults_args(setting: str, algorithm: str) -> list[str]:
    """`fed run`'s arguments for the setting's config with the method's defaults."""
    spec = SETTINGS[setting]
    choice = [] if algorithm == "fedloge" else [f"algorithm={algorithm}"]
    return [str(ROOT / spec["config"]), *spec["overrides"], *choice]


def find(
    setting: str, algorithm: str, seed: int, runs: Path, extra: list[str], sweeps: Path
) -> Path | None:
    """The finished run of a job, if there is one (training nothing)."""
    expected = expected_config(setting, algorithm, sweeps, extra)
    return finished_run(runs / setting / algorithm / f"seed{seed}", expected)


def train(
    setting: str, algorithm: str, seed: int, runs: Path, extra: list[str], sweeps: Path
) -> Path:
    """Train (or resume, or just find) one run; returns its directory."""
    chosen_yaml = chosen_config(sweeps, setting, algorithm)
    expected = expected_config(setting, algorithm, sweeps, extra)
    directory = runs / setting / algorithm / f"seed{seed}"
    done = finished_run(directory, expected)
    if done is not None:
        return done
    started = runs_of(directory, expected)
    checkpoints = started[-1] / "checkpoints" if started else None
    if checkpoints is not None and checkpoints.is_dir() and any(checkpoints.iterdir()):
        command = [*trustvision(), "fed", "run", "--resume", str(started[-1])]
    else:
        config = [str(chosen_yaml)] if chosen_yaml else defaults_args(setting, algorithm)
        command = [
            *trustvision(),
            "fed",
            "run",
            *config,
            f"seed={seed}",
            f"runs_dir={directory}",
            *extra,
        ]
    how = (
        "validation-chosen config" if chosen_yaml else f"defaults: no choice in {sweeps / setting}"
    )
    print(f"[{time.strftime('%H:%M:%S')}] {setting} {algorithm} seed {seed} ({how})", flush=True)
    # One torch thread: at batch 8 a second thread only waits, and with another job on the
    # machine its spinning slowed rounds twenty-fold here (5 s -> 90-150 s).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if run_child(command, env=env) != 0:
        raise SystemExit(f"`{' '.join(command)}` failed (its error is above)")
    done = finished_run(directory, expected)
    if done is None:
        raise SystemExit(f"{directory}: `{' '.join(command)}` ended without a finished run")
    return done


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--algorithms",
        nargs="+",
        choices=ALGORITHMS,
        help="of each setting's methods (all ten on Fashion-MNIST, fedavg and fedloge on "
        "CIFAR-10), only these (default: all of them)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 1 2 3")
    parser.add_argument("--runs", type=absolute, default=ROOT / "runs/fed-compare")
    parser.add_argument(
        "--sweeps",
        type=absolute,
        default=ROOT / "runs/fed-sweep",
        help="benchmarks/fed_sweep.py's directory: the validation-chosen configs",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs trained at once (one process and thread each)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the finished runs and list the missing ones",
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    return parser.parse_args()


def finished_runs(jobs: list[Job], args: argparse.Namespace, reported: set[Job]) -> dict[Job, Path]:
    """The finished run of every job that has one: found, or else trained first, unless
    --report-only or the earlier report holds the job's numbers for the config chosen now
    (`reported`: its run is on a machine this one replaced)."""
    found = {job: find(*job, args.runs, args.overrides, args.sweeps) for job in jobs}
    runs = {job: run for job, run in found.items() if run is not None}
    if args.report_only:
        return runs
    todo = [job for job in jobs if job not in runs and job not in reported]
    for job in sorted(set(jobs) - set(runs) - set(todo)):
        print(f"{' '.join(map(str, job))}: kept from the earlier report (its run is gone)")
    calls = [partial(train, *job, args.runs, args.overrides, args.sweeps) for job in todo]
    return {**runs, **dict(zip(todo, run_in_parallel(calls, workers=args.jobs), strict=True))}


def trained_chosen(run: Path, chosen: Path | None) -> bool:
    """Whether `run` trained the validation-chosen config (equal to it but for seed and runs
    folder): not a run of the defaults, or of an earlier choice, found before a sweep finished."""
    if chosen is None:
        return False
    configs = [yaml.safe_load(path.read_text()) for path in (run / "config.yaml", chosen)]
    return same_config(*configs)


def per_seed(runs: dict[Job, Path], sweeps: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Each run's numbers, by setting and algorithm, one row per seed."""
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (setting, a, seed), run in runs.items():
        row = numbers(run)
        row["tuned"] = trained_chosen(run, chosen_config(sweeps, setting, a))
        row["seed"] = seed
        raw.setdefault(setting, {}).setdefault(a, []).append(row)
    return raw


def validation_counts(
    setting: str,
    block: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    earlier: dict[str, Any],
) -> dict[str, list[int]]:
    """Validation images per class at each compared seed: computed for a setting this
    invocation asked for, carried over from the earlier report for the others (whose data
    this machine may lack)."""
    if setting not in args.settings:
        return earlier["results"].get(setting, {}).get("validation_counts", {})
    counts = fed_validation_counts(setting, compared_seeds(block), args.overrides)
    return {str(seed): per_class for seed, per_class in counts.items()}


def compared_seeds(block: dict[str, list[dict[str, Any]]]) -> list[int]:
    """The seeds any method of a setting was compared on."""
    return sorted(
        {row["seed"] for rows in block.values() for row in rows if row.get("seed") is not None}
    )


def refuse_biased_jobs(jobs: list[Job], args: argparse.Namespace) -> None:
    """Refused before any training: overrides, which would turn a validation-chosen config into
    one no sweep chose; a method whose sweep is still searching (its defaults are no choice);
    and the sweeps' own seed, whose test numbers would carry the optimism
    of a choice made on that seed's validation images among 9 or 18 trials."""
    tuned = sorted({(s, a) for s, a, _ in jobs if chosen_config(args.sweeps, s, a) is not None})
    names = ", ".join(f"{a} ({s})" for s, a in tuned)
    if args.overrides and tuned and not args.report_only:
        raise SystemExit(
            f"overrides {' '.join(args.overrides)} would change the configs chosen on validation "
            f"for {names}: train those as chosen, or give --sweeps a folder without choices to "
            "train every method's defaults with the overrides"
        )
    searching = sorted(
        f"{a} ({s})"
        for s, a in {(s, a) for s, a, _ in jobs}
        if stage_dir(args.sweeps, s, a, 1).is_dir() and chosen_config(args.sweeps, s, a) is None
    )
    if searching and not args.report_only:
        raise SystemExit(
            f"the sweeps of {', '.join(searching)} in {args.sweeps} have chosen nothing: their "
            "defaults would be compared as if no search existed. Compare them once "
            "benchmarks/fed_sweep.py has chosen (a search still running, or whose every trial "
            "failed, chooses nothing: see its sweep.md), or leave out their settings "
            "(--settings) or methods (--algorithms)"
        )
    if tuned and SWEEP_SEED in {seed for _, _, seed in jobs}:
        raise SystemExit(
            f"seed {SWEEP_SEED} is the seed the sweeps chose {names} on: its test numbers would "
            "carry the choice's optimism; compare other seeds"
        )


def jobs_of(args: argparse.Namespace) -> list[Job]:
    """Every (setting, method, seed) asked for: each setting's methods (`--algorithms` picks
    among them) on its seeds, or `--seeds`."""
    return [
        (setting, a, s)
        for setting in args.settings
        for a in SETTINGS[setting].get("algorithms", ALGORITHMS)
        if args.algorithms is None or a in args.algorithms
        for s in args.seeds or SETTINGS[setting]["seeds"]
    ]


def main() -> None:
    from trustvision.runs import machine_summary

    args = parse_args()
    started = time.perf_counter()
    jobs = jobs_of(args)
    if not jobs:
        raise SystemExit(f"none of {args.algorithms} is compared on {', '.join(args.settings)}")
    refuse_biased_jobs(jobs, args)
    report = read_report(args.out / "federated.json")
    earlier = reported_rows(report)
    # a seed the report holds of the config chosen now stands in for its run
    reported = {job for job, row in earlier if stands_in(row, *job[:2], args.sweeps)}
    runs = finished_runs(jobs, args, reported & set(jobs))
    args.out.mkdir(parents=True, exist_ok=True)
    raw = with_kept(per_seed(runs, args.sweeps), earlier, args.sweeps)
    results = {
        setting: {
            "algorithms": {a: summarise(block[a]) for a in ALGORITHMS if a in block},
            "paired": paired(block),
            "validation_counts": validation_counts(setting, block, args, report),
            "plots": plots(setting, block, args.out),
        }
        for setting, block in raw.items()
        if setting in SETTINGS
    }
    # a kept row counts as measured where it stands in for the choice, or no choice exists
    present = set(runs) | {
        job
        for job in kept_jobs(raw)
        if job in reported or chosen_config(args.sweeps, *job[:2]) is None
    }
    meta = {
        "command": "python benchmarks/fed_compare.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_summary(),
        "wall_seconds": time.perf_counter() - started,
        "missing": [job for job in jobs if job not in present],
    }
    body = {"meta": meta, "results": results, "runs": raw}
    text = markdown(results, meta, SETTINGS)
    print(write_results("federated", text, body, out=args.out).read_text())


if __name__ == "__main__":
    run_script(main)
