"""Adaptive smoothing on MNIST, Fashion-MNIST and CIFAR-10: clean vs AutoAttack accuracy of the
standard model, the robust model, the best fixed mix and the adaptive mix.

For each data set (configs/robust/bench_<name>.yaml) the pipeline of `trustvision robust
demo` runs in a work directory: train both bases (each holding out the same 10% of the
training images), choose alpha and the temperatures s_g, s_h of the fixed mix on those
validation images, train the mixing network and choose its gamma bias (and s_g, s_h) on them
too, AutoAttack every model on the same first N test images (standard version: APGD-CE, APGD-T,
FAB-T, Square; the adaptive mix also faces the adaptive APGD with BCE(gamma, 1)), certify
with a Gaussian base. Every finished stage and every finished chunk of 100 attacked images
is kept, so an interrupted run continues where it stopped.

    .venv/bin/python benchmarks/robust.py --datasets mnist --subset 100
    .venv/bin/python benchmarks/robust.py            # all data sets, 500 images each (hours)

writes docs/results/robust.{md,json} and docs/results/robust_<data>_{tradeoff,certified}.png
from every data set whose work directory holds a collected report (validation-selected and
stamped with `measured_by`); a data set the earlier robust.json holds and the work directory
does not (a new machine) is kept from it, marked as such. Each data set's report names the
invocation that measured it (`measured_by`: command, commit, machine, and `stage_commits`,
the commit each reused stage ran at), written into its work directory when this script runs
its pipeline; --report-only records none, so a report without one (or one predating
validation selection) is not collected until this script's command for it runs again
(finished stages are reused).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, ROOT, read_results, run_script, write_results
from rich.console import Console
from robust_report import dataset_section, intro_lines, lipschitz_curves, missing_lines

from trustvision.config import load_config
from trustvision.files import write_atomic
from trustvision.report.console import ConsoleReporter
from trustvision.robust.commands.demo import run_pipeline
from trustvision.robust.config import PipelineConfig
from trustvision.robust.plots import plot_certified
from trustvision.runs import environment_info
from trustvision.train.loop import select_device

DATASETS = ("mnist", "fashion-mnist", "cifar10")
CONFIGS = {name: ROOT / f"configs/robust/bench_{name.replace('-', '')}.yaml" for name in DATASETS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--subset", type=int, default=500, help="test images attacked per model")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/robust-bench")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    parser.add_argument("--no-adaptive", action="store_true", help="skip the mixing network")
    parser.add_argument("--no-certify", action="store_true", help="skip the Gaussian base")
    parser.add_argument(
        "--report-only", action="store_true", help="only rewrite the docs from existing reports"
    )
    parser.add_argument("overrides", nargs="*", help="pipeline config overrides, key=value")
    return parser.parse_args(argv)


def config_for(name: str, args: argparse.Namespace) -> PipelineConfig:
    overrides = [f"eval.subset={args.subset}", f"threads={args.threads}", *args.overrides]
    if args.no_adaptive:
        overrides.append("adaptive=false")
    if args.no_certify:
        overrides.append("smoothing=null")
    return load_config(PipelineConfig, CONFIGS[name], overrides)


def copy_plots(name: str, work: Path, report: dict[str, Any], out: Path) -> dict[str, str]:
    """The data set's plots, copied from its work directory into `out` (a kept report's are
    already there), the certified-accuracy plot of a certification with the earlier Lipschitz
    constant drawn again (robust_report.lipschitz_curves). They are found where the pipeline
    writes them inside `work`: the paths the report records are relative to wherever that
    pipeline ran."""
    plots = {}
    sources = {"tradeoff": work / "tradeoff.png"}
    if report.get("certify"):
        sources["certified"] = work / "certify" / "plots" / "certified.png"
    if report.get("adaptive"):
        sources["gate"] = work / "adaptive-mix" / "plots" / "gate.png"
    for kind, source in sources.items():
        target = out / f"robust_{name.replace('-', '')}_{kind}.png"
        if source.is_file() and not report.get("kept"):
            shutil.copyfile(source, target)
        if target.is_file() and (source.is_file() or report.get("kept")):
            plots[kind] = target.name
    cert = report.get("certify")
    if cert and "lipschitz_constant" not in cert:  # drawn again with the right Lipschitz bound
        radii, lipschitz = lipschitz_curves(cert)
        curves = {
            a: {"tight": c["tight"], "lipschitz": lipschitz[a]} for a, c in cert["curves"].items()
        }
        target = out / f"robust_{name.replace('-', '')}_certified.png"
        title = f"{name}: certified accuracy of the mix"
        plot_certified(curves, cert["grid"], target, title=title, lipschitz_grid=radii)
        plots["certified"] = target.name
    return plots


def invocation(argv: list[str] | None) -> str:
    """This script's command line (`argv` as main got it; None: the process's own)."""
    args = sys.argv[1:] if argv is None else argv
    return ("python benchmarks/robust.py " + " ".join(args)).strip()


def stage_commits(work: Path) -> dict[str, str | None]:
    """The commit each finished stage in `work` ran at (a rerun reuses finished stages, so the
    report's own commit need not be theirs)."""
    commits = {}
    for summary in sorted(work.glob("*/summary.json")):
        environment = json.loads(summary.read_text()).get("environment", {})
        commits[summary.parent.name] = environment.get("git_commit")
    return commits


def stamp_measured_by(path: Path, env: dict[str, Any], argv: list[str] | None) -> None:
    """Record in the data set's report at `path` the invocation that just wrote it, and the
    commits its stages ran at."""
    report = json.loads(path.read_text())
    report["measured_by"] = {
        "command": invocation(argv),
        **env,
        "stage_commits": stage_commits(path.parent),
    }
    write_atomic(path, json.dumps(report, indent=2) + "\n")


def why_unusable(report: dict[str, Any], name: str) -> str | None:
    """Why a data set's report cannot be shown (None if it can): knobs chosen on test images,
    or no named invocation that measured it."""
    if "selection" not in report:
        return "written before knobs were chosen on validation images"
    if "measured_by" not in report:
        return (
            f"it names no invocation that measured it; run this script's command for {name} "
            f"again to record one (finished stages are reused)"
        )
    return None


def collected(work: Path) -> dict[str, dict[str, Any]]:
    """The reports in `work` that say how they were measured: on validation-chosen knobs,
    by a named invocation of this script."""
    reports = {}
    for name in DATASETS:
        path = work / name / "report.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        if reason := why_unusable(report, name):
            print(f"ignoring {path}: {reason}")
        else:
            reports[name] = report
    return reports


def with_kept(reports: dict[str, dict[str, Any]], path: Path) -> dict[str, dict[str, Any]]:
    """`reports` plus every usable data set (`why_unusable`) of the earlier report at `path`
    whose work directory holds no collected report now (a new machine, a cleaned runs folder),
    marked `kept`, so that rewriting the docs never loses a measured data set."""
    record = read_results(
        path,
        "robust.py",
        check=lambda body: {name: dict(report) for name, report in body["datasets"].items()},
    )
    kept = {}
    for name, report in (record or {"datasets": {}})["datasets"].items():
        if reason := why_unusable(report, name):
            print(f"dropping {name} from {path}: {reason}")
        else:
            kept[name] = {**report, "kept": True}
    merged = {**kept, **reports}
    return {name: merged[name] for name in DATASETS if name in merged}


def write_report(
    reports: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    seconds: float,
    argv: list[str] | None,
) -> None:
    env = environment_info(torch.device("cpu"))
    command = invocation(argv)
    lines = intro_lines(command, env, args.threads, None if args.report_only else seconds)
    for name, report in reports.items():
        plots = copy_plots(name, args.work / name, report, args.out)
        lines += dataset_section(name, report, plots)
    lines += missing_lines([d for d in DATASETS if d not in reports])
    body = {"environment": env, "command": command, "datasets": reports}
    write_results("robust", "\n".join(lines), body, out=args.out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    for name in [] if args.report_only else args.datasets:
        print(f"== {name}", flush=True)
        cfg = config_for(name, args)
        run_pipeline(
            cfg,
            args.work / name,
            reporter=ConsoleReporter(Console()),
            log=lambda s: print(s, flush=True),
        )
        env = environment_info(select_device(cfg.device))
        stamp_measured_by(args.work / name / "report.json", env, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    reports = with_kept(collected(args.work), args.out / "robust.json")
    write_report(reports, args, time.perf_counter() - started, argv)
    print(f"wrote {args.out / 'robust.md'}")


if __name__ == "__main__":
    run_script(main)
