"""`trustvision sweep`: hyperparameter search (mounted by trustvision.cli as `sweep`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trustvision.clikit import EXPECTED, command_group, command_options, fail
from trustvision.errors import ConfigError

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from trustvision.sweep.spec import SweepSpec

JobsOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Trials at once; each gets cores / jobs threads (unless OMP_NUM_THREADS is set). "
        "Above 1, a sampled (TPE) search does not repeat from its seed: Optuna reseeds it in "
        "every worker.",
    ),
]
ContinueFromOpt = Annotated[
    Path | None,
    typer.Option(
        "--continue-from",
        metavar="SWEEP_JSON",
        help="The sweep.json of this spec's sweep whose directory is gone (another machine): "
        "its completed trials count and are not run again, only the rest run (in a new --out; "
        "an --out that holds the study already just continues).",
    ),
]

EXAMPLE_SPEC = """\
name: mnist-lr
command: train              # a trustvision sub-command: train, fed run, ...
config: configs/train/mnist_cnn.yaml
overrides: [epochs=1, data.train_subset=2000]   # the same in every trial
params:                     # searched keys, dotted as in key=value overrides
  optim.lr: {grid: [0.01, 0.03, 0.1]}           # a grid: GridSampler
  # optim.lr: {low: 0.001, high: 0.3, log: true}  # a range: TPE (int: true)
  # model.name: {choices: [mnist_cnn, smallcnn]}     # categories: TPE
trials: 3                   # for a grid: default and maximum = grid size
objective: {metric: validation.top1, direction: maximize}  # in summary.json
test_metric: test.top1      # recorded, reported, never read by the choice
prune: {metric: val_acc, step: epoch, warmup: 2, startup_trials: 2}
# prune's `direction` (default: the objective's) says which way its metric improves
seed: 0                     # the sampler's seed; prune above is optional"""

sweep_app = command_group(
    help="Hyperparameter search with Optuna: every trial a real trustvision command, chosen on "
    "validation, resumable after a kill.\n\n"
    "A spec (configs/sweep/mnist_lr.yaml, with its optional `trials` and `prune` on):\n\n"
    + escape(EXAMPLE_SPEC)
)
console = Console()

OVERRIDES_HELP = "Spec overrides as `key=value`: `trials=5 seed=1 objective.direction=minimize`."


class RichSweepReporter:
    """A progress bar of trials done out of planned, and one line per finished trial."""

    def __init__(self, console: Console, spec: SweepSpec) -> None:
        self.console = console
        self.spec = spec
        self.progress = Progress(
            TextColumn("sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None

    def start(self, *, done: int, total: int, retried: Sequence[int]) -> None:
        if retried:
            numbers = ", ".join(str(n) for n in retried)
            self.console.print(
                f"trial(s) {numbers} were killed with the last sweep: running them again"
            )
        self.progress.start()
        self.task = self.progress.add_task("sweep", total=total, completed=done)

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self.console.print(
            f"trial {number} started: {_params(params)}", highlight=False, soft_wrap=True
        )

    def trial_finished(self, trial: FrozenTrial) -> None:
        self.progress.advance(self.task)
        parts = [f"trial {trial.number}", trial.state.name, _params(trial.params)]
        if trial.value is not None and trial.state.name == "COMPLETE":
            parts.append(f"validation {trial.value:.4f}")
        test = trial.user_attrs.get(self.spec.test_metric or "")
        if test is not None:
            parts.append(f"test {test:.4f}")
        parts.append(f"{trial.user_attrs.get('seconds', 0):.0f} s")
        self.console.print("  ".join(parts), highlight=False, soft_wrap=True)
        if trial.state.name == "FAIL":
            self.console.print(
                f"[red]  {trial.user_attrs.get('error', 'failed')}[/]", highlight=False
            )
            tail = trial.user_attrs.get("log_tail", "")
            if tail:
                self.console.print(tail, style="dim", highlight=False, markup=False)

    def finish(self) -> None:
        self.progress.stop()


def _params(params: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


@sweep_app.command("run")
def run(
    spec_path: Annotated[
        Path, typer.Argument(metavar="SPEC", help="A sweep spec, e.g. configs/sweep/mnist_lr.yaml.")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="The sweep directory \\[default: sweeps/<name>]. Run again to continue."),
    ] = None,
    jobs: JobsOpt = 1,
    continue_from: ContinueFromOpt = None,
) -> None:
    """Run a sweep; run it again with the same spec and --out to continue after a kill.

    Each trial is its own process: `trustvision COMMAND CONFIG OVERRIDES PARAMS runs_dir=OUT/trials/trial-N`.
    The chosen trial has the best validation metric; the test metric is recorded beside it and never read by the choice.
    OUT gets study.db (`optuna-dashboard sqlite:///OUT/study.db` shows it), sweep.json, sweep.md, sweep.png and chosen.yaml, the chosen trial's config to train again (none if the chosen trial was imported from an earlier sweep's report: its run is elsewhere).

    Example: trustvision sweep run configs/sweep/mnist_lr.yaml trials=2 --out sweeps/lr
    On a new machine, from the old one's report: ... --out sweeps/lr --continue-from old/sweep.json

    `trustvision sweep --help` shows a spec with every key.
    """
    from trustvision.sweep.report import write_report
    from trustvision.sweep.runner import SweepInterrupted, run_sweep
    from trustvision.sweep.spec import load_spec
    from trustvision.sweep.trial import check_first_trial

    interrupted = False
    try:
        spec = load_spec(spec_path, overrides)
        root = click.get_current_context().find_root().command
        options = command_options(root, spec.command)
        resumable = "resume" in options
        out = out or Path("sweeps") / spec.name
        console.print(
            f"sweep `{spec.name}`: {spec.planned_trials} trial(s) of `trustvision {spec.command}`"
            f", {jobs} at a time, in {out}; validation `{spec.objective.metric}`"
            + (f", test `{spec.test_metric}`" if spec.test_metric else ""),
            soft_wrap=True,
        )
        if "print_config" in options:  # a typo in a key fails here, not in every trial
            check_first_trial(spec)
        if continue_from is not None:
            continue_sweep(spec, out, continue_from)
        try:
            run_sweep(
                spec, out, jobs=jobs, resumable=resumable, reporter=RichSweepReporter(console, spec)
            )
        except SweepInterrupted:
            interrupted = True
        report = write_report(out)
    except EXPECTED as err:
        raise fail(err) from None
    print_report(report, spec, out)
    if interrupted:
        console.print("[yellow]interrupted[/]: run the same command again to continue")
        raise typer.Exit(130)


def continue_sweep(spec: SweepSpec, out: Path, earlier: Path) -> None:
    """Begin `out` with the completed trials of `earlier`, a sweep.json of the same search (an
    `out` begun already, by this or by a killed run, is continued as it is)."""
    from trustvision.sweep.imported import check_same_search, import_trials
    from trustvision.sweep.study import STUDY_FILE

    if (out / STUDY_FILE).exists():
        console.print(
            f"{out} holds the sweep already: continuing it", highlight=False, soft_wrap=True
        )
        return

    if not earlier.is_file():
        raise ConfigError(
            f"`{earlier}` is {'a directory' if earlier.is_dir() else 'not there'}: give the "
            "sweep.json the earlier sweep wrote in its --out"
        )
    try:
        report = json.loads(earlier.read_text())
        trials, searched = list(report["trials"]), dict(report["spec"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"`{earlier}` is not a sweep.json ({type(err).__name__}: {err})"
        ) from None
    check_same_search(spec, searched, report.get("config_sha256"), source=f"`{earlier}`")
    queued = import_trials(spec, out, trials, source=str(earlier))
    done = sum(t["state"] == "COMPLETE" for t in trials)
    console.print(
        f"continuing from {earlier}: {done} finished trial(s) imported",
        highlight=False,
        soft_wrap=True,
    )
    if queued:
        console.print(f"{len(queued)} grid point(s) left to run", highlight=False)


@sweep_app.command("report")
def report(
    out: Annotated[Path, typer.Argument(help="A sweep directory (the --out of `sweep run`).")],
) -> None:
    """Rewrite sweep.json, sweep.md, sweep.png and chosen.yaml from the study in OUT."""
    from trustvision.sweep.report import write_report
    from trustvision.sweep.study import read_saved_spec

    try:
        spec = read_saved_spec(out)
        result = write_report(out)
    except EXPECTED as err:
        raise fail(err) from None
    print_report(result, spec, out)


def print_report(report: dict[str, Any], spec: SweepSpec, out: Path) -> None:
    """Every trial in a table, then the chosen one and where its config is."""
    test = spec.test_metric
    console.print(f"validation: `{spec.objective.metric}`" + (f", test: `{test}`" if test else ""))
    table = Table("trial", "state", *spec.params, "validation")
    if test:
        table.add_column("test")
    table.add_column("seconds")
    chosen = report["chosen"]
    for r in report["trials"]:
        row = [str(r["number"]), r["state"], *(_param(r["params"].get(k)) for k in spec.params)]
        row.append(_cell(r["validation"]))
        if test:
            row.append(_cell(r["test"]))
        row.append("" if r["seconds"] is None else f"{r['seconds']:.0f}")
        style = "bold green" if chosen and r["number"] == chosen["number"] else None
        table.add_row(*row, style=style)
    console.print(table)
    if chosen is None:
        console.print("[yellow]no trial completed[/]: nothing is chosen")
        return
    console.print(
        f"chosen on validation: trial {chosen['number']} ({_params(chosen['params'])}); "
        f"report {out / 'sweep.md'}"
    )
    if chosen["config"] is None:
        line = f"chosen config: none here ({chosen['note']}; its run is not in {out})"
        console.print(line, markup=False, highlight=False)
    else:
        console.print(
            f"chosen config: {escape(str(chosen['config']))}", highlight=False, soft_wrap=True
        )


def _param(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)
