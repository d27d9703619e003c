"""`trustvision compact`: train, export and benchmark lightweight CNNs (mounted as `compact`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trustvision import distributed
from trustvision.clikit import (
    EXPECTED,
    PrintConfigOpt,
    command_config,
    command_group,
    fail,
    overrides_help,
)

compact_app = command_group(
    data_parallel=frozenset({"train", "run"}),
    help="Lightweight CNNs: dual-input-output training, progressive unfreezing, ONNX/int8 "
    "export and latency.",
)
console = Console()

OVERRIDES_HELP = overrides_help("dual.epochs=3 finetune.epochs=2 rows=[full]")
CONFIG_HELP = "A YAML config, e.g. configs/compact/mnist_demo.yaml."
RUN_HELP = "A run directory written by `trustvision compact train`."
ROW_NAMES = {
    "plain": "plain (same epochs, same augmentation)",
    "no_unfreeze": "dual + unify, no progressive unfreezing",
    "full": "dual + unify + progressive unfreezing",
}


def train_rows(cfg: Any, resume: Path | None) -> Any:
    """Say what will be trained, then train every row of `cfg` (into `resume` if given)."""
    from trustvision.compact.train import train_compact
    from trustvision.report.console import ConsoleReporter

    console.print(
        f"`{cfg.model.name}` on `{cfg.data.name}`: stage 1 (dual) {cfg.dual.epochs} epoch(s), "
        f"stage 2 {cfg.finetune.epochs}, rows {', '.join(cfg.rows)}"
    )
    return train_compact(cfg, run_dir=resume, reporter=ConsoleReporter(console))


def print_rows(summary: dict[str, Any]) -> None:
    """The ablation table of one run."""
    table = Table("row", "test top-1", "epochs", "images through a model", "wall (s)")
    for name, row in summary["rows"].items():
        table.add_row(
            ROW_NAMES.get(name, name),
            f"{row['top1']:.2%}",
            str(row["epochs"]),
            f"{row['image_passes']:,}",
            f"{row['wall_seconds']:.0f}",
        )
    console.print(table)
    dual = summary.get("dual")
    if dual:
        branches = "  ".join(f"{k} {v:.2%}" for k, v in dual["branches"].items())
        console.print(f"stage 1 branches (own heads): {branches}")
    console.print(
        f"deployed: `{summary['model']}` ({summary['deployed']}), "
        f"{summary['parameters']:,} parameters (budget {summary['budget']:,}), "
        f"{summary['macs']:,} MACs per image"
    )


def print_export(record: dict[str, Any]) -> None:
    """Accuracy, parity, sizes and the checks of an export."""
    top1, sizes = record["top1"], record["bytes"]
    console.print(
        f"test top-1 on {record['test_images']:,} images: PyTorch {top1['pytorch']:.2%}, "
        f"ONNX fp32 {top1['onnx_fp32']:.2%}, ONNX int8 {top1['onnx_int8']:.2%} "
        f"(drop {record['int8_drop_points']:.2f} points)"
    )
    console.print(
        f"ONNX fp32 vs PyTorch: max |logit diff| {record['fp32_parity']['max_abs_diff']:.2e}, "
        f"identical predictions {record['fp32_parity']['agreement']:.2%}"
    )
    console.print(
        f"ONNX int8 vs PyTorch: identical predictions {record['int8_parity']['agreement']:.2%} "
        "(reported, not checked: the int8 check is the accuracy drop)"
    )
    console.print(
        f"sizes: safetensors {sizes['safetensors']:,} B, ONNX fp32 {sizes['onnx_fp32']:,} B, "
        f"ONNX int8 {sizes['onnx_int8']:,} B"
    )
    for check, ok in record["checks"].items():
        console.print(f"{'[green]pass' if ok else '[red]FAIL'}[/]  {check}", highlight=False)


def print_bench(result: dict[str, Any]) -> None:
    """The latency table."""
    table = Table("engine", "threads", "batch-1 p50 (ms)", "batch-1 p99 (ms)", "images/s (batch)")
    for row in result["latency"]:
        table.add_row(
            row["engine"],
            str(row["threads"]),
            f"{row['p50_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
            f"{row['throughput']:,.0f}",
        )
    console.print(table)
    console.print(
        f"{result['machine']}, 1-min load average {result['load_average_1min']:.1f}",
        highlight=False,
    )


@compact_app.command("train")
def train(
    config: Annotated[Path | None, typer.Argument(help=CONFIG_HELP)] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run directory (finished rows are kept).")
    ] = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Stage 1 (dual), unification, stage 2 (progressive unfreezing) and the baselines.

    Example: trustvision compact train configs/compact/mnist_demo.yaml dual.epochs=2
    """
    from trustvision.compact.config import CompactConfig

    try:
        cfg = command_config(
            CompactConfig,
            config,
            overrides,
            resume=resume,
            print_config=print_config,
            required="see configs/compact/",
        )
        run = train_rows(cfg, resume)
    except EXPECTED as err:
        raise fail(err) from None
    print_rows(run.read_summary())
    console.print(f"run directory: {escape(str(run.path))}", soft_wrap=True)


@compact_app.command("export")
def export(run_dir: Annotated[Path, typer.Argument(help=RUN_HELP)]) -> None:
    """Export the deployed model to ONNX (fp32) and static int8; check both on the test set."""
    from trustvision.compact.deploy import export_run
    from trustvision.runs import RunDir
    from trustvision.train.recipe import one_process_only

    try:
        one_process_only()  # every process would write the same files
        record = export_run(RunDir.open(run_dir))
    except EXPECTED as err:
        raise fail(err) from None
    print_export(record)
    if not record["passed"]:
        raise typer.Exit(1)


@compact_app.command("bench")
def bench(run_dir: Annotated[Path, typer.Argument(help=RUN_HELP)]) -> None:
    """Parameters, MACs, sizes and latency: PyTorch eager vs onnxruntime fp32 and int8."""
    from trustvision.compact.deploy import bench_run
    from trustvision.runs import RunDir
    from trustvision.train.recipe import one_process_only

    try:
        one_process_only()  # every process would write the same files
        result = bench_run(RunDir.open(run_dir))
    except EXPECTED as err:
        raise fail(err) from None
    print_bench(result)


@compact_app.command("export-c")
def export_c(
    run_dir: Annotated[Path, typer.Argument(help=RUN_HELP)],
    variant: Annotated[
        str,
        typer.Option(
            "--variant",
            click_type=click.Choice(["fp32", "int8"]),
            help="fp32: from the weights; int8: from export/model.int8.onnx (integer arithmetic).",
        ),
    ] = "fp32",
) -> None:
    """The deployed model as one C99 file and a header (static buffers, no malloc).

    Writes RUN_DIR/c/tv_model.c and .h (fp32), or tv_int8_model.c and .h (int8, after
    `trustvision compact export RUN_DIR`): `tv_predict(pixels, logits)` or
    `tv_int8_predict(...)` takes C x H x W uint8 pixels and writes float logits.
    Example: trustvision compact export-c runs/compact-mnist-demo-... --variant int8
    """
    from trustvision.compact.c_export import export_c as write_c
    from trustvision.runs import RunDir
    from trustvision.train.recipe import one_process_only

    try:
        one_process_only()  # every process would write the same files
        record = write_c(RunDir.open(run_dir), variant)  # type: ignore[arg-type]
    except EXPECTED as err:
        raise fail(err) from None
    width = 4 if variant == "fp32" else 1
    console.print(
        f"{variant} C in {record['dir']} ({record['prefix']}_model.c): "
        f"{record['constants']:,} const values, {2 * width * record['activation_values']:,} B "
        f"of static buffers; operators {', '.join(dict.fromkeys(record['operators']))}"
    )


@compact_app.command("run")
def run_all(
    config: Annotated[Path | None, typer.Argument(help=CONFIG_HELP)] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)
    ] = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train, export and benchmark in one go (the demo).

    Example: trustvision compact run configs/compact/mnist_demo.yaml
    """
    from trustvision.compact.config import CompactConfig
    from trustvision.compact.deploy import bench_run, export_run

    try:
        cfg = command_config(
            CompactConfig,
            config,
            overrides,
            print_config=print_config,
            required="see configs/compact/",
        )
        run = train_rows(cfg, None)
        if not distributed.is_main():  # under torchrun: rank 0 alone exports and times
            return
        print_rows(run.read_summary())
        record = export_run(run)
        print_export(record)
        print_bench(bench_run(run))
    except EXPECTED as err:
        raise fail(err) from None
    console.print(f"run directory: {escape(str(run.path))}", soft_wrap=True)
    if not record["passed"]:
        raise typer.Exit(1)
