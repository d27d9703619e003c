"""`trustvision`: one command, a sub-command per system; each maps a typed config to one call."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import trustvision
from trustvision import distributed
from trustvision.clikit import (
    EXPECTED,
    CheckpointOpt,
    PrintConfigOpt,
    ResumeOpt,
    command_config,
    command_group,
    fail,
    overrides_help,
    refuse_under_torchrun,
)
from trustvision.compact.cli import compact_app
from trustvision.data.catalog import CATALOG
from trustvision.federated.cli import fed_app
from trustvision.robust.cli import robust_app
from trustvision.sweep.cli import sweep_app

app = command_group(
    help="Image classifiers that survive the real world: federated long-tailed learning, "
    "lightweight CNNs and adaptive smoothing, on one training core."
)
data_app = command_group(help="Fetch, inspect and verify data sets in the local cache.")
app.add_typer(data_app, name="data")
app.add_typer(fed_app, name="fed")
app.add_typer(compact_app, name="compact")
app.add_typer(robust_app, name="robust")
app.add_typer(sweep_app, name="sweep")
console = Console()

OVERRIDES_HELP = overrides_help("optim.lr=0.05 data.batch_size=64")
FROM_HELP = "Read the data set from this local file or folder (IDX files, a CIFAR python archive, an image-folder zip)."
ImageSizeOpt = Annotated[
    int | None,
    typer.Option(min=1, help="image-folder only: resize every image to this square size (pixels)."),
]


def version_callback(value: bool) -> None:
    if value:
        console.print(f"trustvision {trustvision.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Image classifiers that survive the real world."""
    refuse_under_torchrun(ctx, frozenset({"train", "robust", "compact"}))  # groups check theirs
    if distributed.launched() and os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's life) rank 0 reports


@app.command()
def train(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="A YAML config, e.g. configs/train/mnist_cnn.yaml (default: defaults)."
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)
    ] = None,
    resume: ResumeOpt = None,
    checkpoint: CheckpointOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train one model on one data set (centralised) and write a run directory.

    Example: trustvision train configs/train/mnist_cnn.yaml epochs=3 optim.lr=0.05

    `trustvision train --print-config` lists every key you can set.
    """
    from trustvision.config import TrainConfig

    try:
        cfg = command_config(
            TrainConfig,
            config,
            overrides,
            resume=resume,
            checkpoint=checkpoint,
            print_config=print_config,
        )
        from trustvision.report.console import ConsoleReporter
        from trustvision.train.centralized import train_model

        console.print(f"training `{cfg.model.name}` on `{cfg.data.name}` for {cfg.epochs} epoch(s)")
        run = train_model(
            cfg, resume_dir=resume, checkpoint=checkpoint, reporter=ConsoleReporter(console)
        )
    except EXPECTED as err:
        raise fail(err) from None
    summary = run.read_summary()
    console.print(
        f"test accuracy {summary['test']['top1']:.2%} in {summary['wall_seconds']:.0f} s; run directory: {run.path}"
    )


DATASET_HELP = ", ".join(CATALOG) + "."  # the names `data fetch`, `info` and `verify` take


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help=DATASET_HELP)],
    source: Annotated[Path | None, typer.Option("--from", help=FROM_HELP)] = None,
    image_size: ImageSizeOpt = None,
) -> None:
    """Fetch NAME into the cache ($TRUSTVISION_DATA, default ~/.cache/trustvision), verifying every file."""
    from trustvision.data.sources import fetch

    try:
        path = fetch(name, from_path=source, image_size=image_size)
    except EXPECTED as err:
        raise fail(err) from None
    console.print(f"`{name}` is in the cache at {escape(str(path))}", soft_wrap=True)


@data_app.command("info")
def data_info(
    name: Annotated[str, typer.Argument(help=DATASET_HELP)],
    source: Annotated[Path | None, typer.Option("--from", help=FROM_HELP)] = None,
    image_size: ImageSizeOpt = None,
) -> None:
    """Print image shape, source, and image counts per split and class."""
    from trustvision.data.dataset import dataset_summary, load_dataset

    try:
        summary = dataset_summary(load_dataset(name, from_path=source, image_size=image_size))
    except EXPECTED as err:
        raise fail(err) from None
    shape, origin = tuple(summary["image_shape"]), escape(str(summary["source"]))
    console.print(f"[bold]{escape(summary['name'])}[/]  shape {shape}  source {origin}")
    table = Table("class", *summary["splits"].keys())
    for index, cls in enumerate(summary["classes"]):  # folder names, shown as written
        counts = (str(s["per_class"][index]) for s in summary["splits"].values())
        table.add_row(escape(f"{index} {cls}"), *counts)
    table.add_row("[bold]total", *(f"[bold]{s['count']}" for s in summary["splits"].values()))
    console.print(table)


@data_app.command("verify")
def data_verify(
    name: Annotated[str, typer.Argument(help=DATASET_HELP)],
) -> None:
    """Re-hash the cached arrays of NAME against the hashes recorded when they were made."""
    from trustvision.data.sources import verify_cache

    try:
        checked = verify_cache(name)
    except EXPECTED as err:
        raise fail(err) from None
    for line in checked:
        console.print(f"ok  {line}")


@app.command()
def report(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories, sweep directories (trustvision sweep) or folders of runs "
            "(e.g. runs/demo-fed for a comparison).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[
        str | None,
        typer.Option(help="The page's title. Default: the run's folder, or `N runs compared`."),
    ] = None,
) -> None:
    """One self-contained HTML page for runs, a comparison or a sweep.

    Headline numbers, curves, per-class accuracy, config and machine; figures inlined, no
    network requests.

    Example: trustvision report runs/demo-fed --out fed-report.html
    """
    from trustvision.report.html import write_report

    try:
        path = write_report(runs, out, title=title)
    except EXPECTED as err:
        raise fail(err) from None
    console.print(f"report: {escape(str(path))}", soft_wrap=True)


@app.command()
def models(
    num_classes: Annotated[int, typer.Option(min=1, help="Classes of the head.")] = 10,
    in_channels: Annotated[int, typer.Option(min=1, help="Input channels.")] = 3,
) -> None:
    """List the registered architectures with their parameter counts."""
    from trustvision.models import create_model, list_models

    table = Table("model", "parameters", "feature dim")
    for name in list_models():
        model = create_model(name, num_classes=num_classes, in_channels=in_channels)
        table.add_row(name, f"{model.num_parameters():,}", str(model.feature_dim))
    console.print(table)
