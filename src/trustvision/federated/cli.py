"""`trustvision fed`: federated training and evaluation (mounted by trustvision.cli as `fed`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trustvision.clikit import (
    EXPECTED,
    CheckpointOpt,
    PrintConfigOpt,
    ResumeOpt,
    command_config,
    command_group,
    fail,
    fitted_table,
    overrides_help,
)

fed_app = command_group(
    help="Federated learning on long-tailed, non-IID client data (FedLoGe and baselines)."
)
console = Console()

OVERRIDES_HELP = overrides_help("optim.lr=0.1 'algorithm={name: fedprox, options: {mu: 0.01}}'")


def format_round(record: dict[str, Any]) -> str:
    """One line per round: loss, and the accuracies when the round was evaluated (generic,
    the algorithm's further global predictors, local)."""
    from trustvision.federated.algorithm import reported_modes

    parts = [f"round {record['round']}", f"loss {record['train_loss']:.4f}"]
    modes = [(f"{name}_acc", name) for name in reported_modes()]
    for key, label in (("generic_acc", "generic"), *modes, ("local_acc", "local")):
        if key in record:
            parts.append(f"{label} {record[key]:.2%}")
    for key, label in (("failures", "failed: clients"), ("eval_failures", "not evaluated: client")):
        if record.get(key):
            parts.append(f"{label} {', '.join(str(f['client']) for f in record[key])}")
    parts.append(f"{record.get('round_seconds', 0):.1f} s")
    return "  ".join(parts)


class RoundReporter:
    """A progress bar over a round's clients (on a terminal) and one line per round."""

    def __init__(self, console: Console) -> None:
        from trustvision.report.console import ConsoleReporter

        self.inner = ConsoleReporter(console)
        self.console = console

    def start(self, title: str, total: int) -> None:
        self.inner.start(title, total)

    def advance(self) -> None:
        self.inner.advance()

    def finish(self, record: dict[str, Any]) -> None:
        if self.inner.progress is not None:
            self.inner.progress.stop()
            self.inner.progress = None
        self.console.print(format_round(record), highlight=False)


@fed_app.command("run")
def run(
    config: Annotated[
        Path | None, typer.Argument(help="A YAML config, e.g. configs/fed/fmnist_lt_cpu.yaml.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)
    ] = None,
    resume: ResumeOpt = None,
    checkpoint: CheckpointOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train one federated algorithm and write a run directory.

    Example: trustvision fed run configs/fed/fmnist_lt_cpu.yaml algorithm=fedavg rounds=10
    """
    from trustvision.federated.config import FedConfig

    try:
        cfg = command_config(
            FedConfig,
            config,
            overrides,
            resume=resume,
            checkpoint=checkpoint,
            print_config=print_config,
            required="see configs/fed/",
        )
        from trustvision.federated.runner import run_federated

        console.print(
            f"`{cfg.algorithm.name}` on `{cfg.data.name}`: {cfg.num_clients} clients, "
            f"{cfg.clients_per_round} a round, {cfg.rounds} rounds"
        )
        run_dir = run_federated(
            cfg, resume_dir=resume, checkpoint=checkpoint, reporter=RoundReporter(console)
        )
    except EXPECTED as err:
        raise fail(err) from None
    print_headline(run_dir.read_summary().get("headline", {}))
    console.print(f"run directory: {escape(str(run_dir.path))}", soft_wrap=True)


@fed_app.command("eval")
def evaluate(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory written by `trustvision fed run`.")
    ],
) -> None:
    """Re-evaluate a run's newest checkpoint (generic, universal, local masked and unmasked); writes eval.json."""
    from trustvision.federated.runner import evaluate_run

    try:
        result = evaluate_run(run_dir)
    except EXPECTED as err:
        raise fail(err) from None
    print_headline(result["headline"], title=f"round {result['round']}")


@fed_app.command("compare")
def compare(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories, finished sweep directories (their trial chosen on "
            "validation), or directories of runs (the newest finished run of each algorithm, "
            "options and model in one is taken). All of one data setting; each run counts once.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help=escape("Where the plots go [default: compare/ beside the first run].")),
    ] = None,
) -> None:
    """Compare finished runs: generic and local accuracy side by side, and two plots.

    Three tables: the final round's test accuracies, the generic model's by class frequency (head, middle, tail), and the choice made on validation: the round whose validation accuracy was highest (generic and local chosen apart), with that validation accuracy and the round's test accuracy. No number is picked by test.

    The plots: accuracy per round (one line per run) and generic per-class accuracy against training frequency.

    Example: trustvision fed compare runs/demo-fed
    """
    from trustvision.federated.compare import comparison, comparison_plots, finished_runs

    try:
        runs = finished_runs(paths)
    except EXPECTED as err:
        raise fail(err) from None
    for table in comparison_tables(comparison(runs)):
        console.print(table)
    first = next(iter(runs.values())).path
    for path in comparison_plots(runs, out or first.parent / "compare"):
        console.print(f"plot: {escape(str(path))}", soft_wrap=True)


GROUPS = {"generic_head": "head", "generic_middle": "middle", "generic_tail": "tail"}


def comparison_tables(rows: list[dict[str, Any]]) -> tuple[Table, Table, Table]:
    """The final round's test accuracies, the generic model's by class frequency group, and
    the rounds validation chose (generic and local apart) with their validation and test
    accuracies, one row per run; three tables, so each fits an 80-column terminal."""
    from trustvision.federated.compare import SELECTED, columns

    def percent(value: float | None) -> str:  # None: a NaN as summary.json writes it
        return f"{100 * value:.1f}" if value is not None and value == value else "-"

    overall = {k: label for k, label in columns().items() if k not in GROUPS}
    finals, groups, picks = [], [], []
    for row in rows:
        finals.append([row["label"], *(percent(row[k]) for k in overall)])
        groups.append([row["label"], *(percent(row[k]) for k in GROUPS)])
        cells = [row["label"]]
        for kind, key in SELECTED.items():
            pick = row["selected"].get(kind, {})
            cells.append(percent(pick.get(f"{kind}_val_acc")))
            cells.append(f"{percent(pick[key])} ({pick['round']})" if key in pick else "-")
        picks.append(cells)
    headers = [f"{kind} {part}" for kind in SELECTED for part in ("val", "test (round)")]
    return (
        fitted_table("final round, top-1 % on test", ["run", *overall.values()], finals),
        fitted_table(
            "final round, the generic model by class frequency, top-1 % on test",
            ["run", *GROUPS.values()],
            groups,
        ),
        fitted_table(
            "the round validation chose (generic and local apart), top-1 %",
            ["run", *headers],
            picks,
        ),
    )


@fed_app.command("algorithms")
def algorithms() -> None:
    """List the registered algorithms and their options with defaults."""
    from trustvision.federated.algorithm import algorithm_class, list_algorithms

    table = Table("algorithm", "options (defaults)")
    for name in list_algorithms():
        options = algorithm_class(name).Options()
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in options.model_dump().items()) or "-")
    console.print(table)


def print_headline(headline: dict[str, float | None], *, title: str = "final") -> None:
    """A table of the headline accuracies (None, or NaN: a group without images)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in headline.items():
        table.add_row(key, f"{value:.2%}" if value is not None and value == value else "n/a")
    console.print(table)
