"""`trustvision robust`: base models, mixes, AutoAttack evaluation and certification.

Mounted by trustvision.cli as `robust` (`app.add_typer(robust_app, name="robust")`). Only
typer and rich are imported here; each command imports torch-heavy code when it runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from trustvision.clikit import (
    EXPECTED,
    CheckpointOpt,
    PrintConfigOpt,
    ResumeOpt,
    command_config,
    command_group,
    fail,
    fitted_table,
    overrides_argument,
)

robust_app = command_group(
    data_parallel=frozenset({"train"}),
    help="Adaptive smoothing: standard + robust base models, their mix, AutoAttack, certificates.",
)
console = Console()

DEMO_CONFIG = Path("configs/robust/demo_mnist.yaml")
TrainConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="A YAML config, e.g. configs/robust/mnist_pgd.yaml (keys: --print-config)."
    ),
]
# mix, eval and certify work on runs named by overrides; their keys: --print-config
ModelsConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="A YAML config of this command's keys (see --print-config); usually none: name the "
        "models by overrides."
    ),
]

TrainOverridesArg = Annotated[list[str] | None, overrides_argument("attack.eps=0.3 epochs=2")]
MixOverridesArg = Annotated[
    list[str] | None, overrides_argument("standard=runs/std-... robust=runs/pgd-... kind=adaptive")
]
EvalOverridesArg = Annotated[
    list[str] | None, overrides_argument("model=runs/mix-... eval.subset=500")
]
CertifyOverridesArg = Annotated[
    list[str] | None,
    overrides_argument("standard=runs/std-... robust=runs/gauss-... certify.subset=100"),
]
DemoOverridesArg = Annotated[list[str] | None, overrides_argument("eval.subset=50 seed=1")]
RunDirOpt = Annotated[
    Path | None,
    typer.Option("--run-dir", help="Write into (or resume) this directory instead of a new one."),
]


def _log(text: str) -> None:
    console.print(text, highlight=False)


@robust_app.command("train")
def train(
    config: TrainConfigArg = None,
    overrides: TrainOverridesArg = None,
    resume: ResumeOpt = None,
    checkpoint: CheckpointOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train a base model: standard, PGD-AT, TRADES, FGSM-RS (fast AT) or Gaussian noise.

    Example: trustvision robust train configs/robust/mnist_pgd.yaml epochs=1
    """
    from trustvision.robust.config import RobustTrainConfig

    try:
        cfg = command_config(
            RobustTrainConfig,
            config,
            overrides,
            resume=resume,
            checkpoint=checkpoint,
            print_config=print_config,
            required="see configs/robust/",
        )
        from trustvision.report.console import ConsoleReporter
        from trustvision.robust.commands.train import train_robust

        _log(f"training `{cfg.model.name}` on `{cfg.data.name}` with `{cfg.attack.method}`")
        run = train_robust(
            cfg, run_path=resume, checkpoint=checkpoint, reporter=ConsoleReporter(console)
        )
    except EXPECTED as err:
        raise fail(err) from None
    summary = run.read_summary()
    _log(f"clean test accuracy {summary['test']['top1']:.2%}; run directory: {run.path}")


def budget(value: float | None) -> float | None:
    """An l_inf budget: a number in (0, 1]."""
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(
            f"{value} is not an l_inf budget in (0, 1] on [0, 1] pixels (8/255 is 0.0314)"
        )
    return value


@robust_app.command("import")
def import_model(
    checkpoint: Annotated[
        Path, typer.Argument(help="A RobustBench model-zoo checkpoint you downloaded (.pt).")
    ],
    dataset: Annotated[str, typer.Option(help="Its data set: cifar10, cifar100, ...")],
    like: Annotated[
        Path | None,
        typer.Option(
            help="A base run whose validation hold-out the imported run records (the standard "
            "base you will mix it with)."
        ),
    ] = None,
    eps: Annotated[
        float | None,
        typer.Option(
            help="The l_inf budget it was trained for, in [0, 1] pixels (8/255 = 0.0314), "
            "recorded in its summary. `robust mix` and `robust eval` attack at their own "
            "`eps=` / `eval.eps=` (default: the data set's usual budget), not at this one.",
            callback=budget,
        ),
    ] = None,
    runs_dir: Annotated[str, typer.Option(help="Where the run directory goes.")] = "runs",
) -> None:
    """Import a RobustBench WideResNet as a base run for `robust mix`, saved as safetensors.

    The checkpoint is read with torch.load(weights_only=True) and every tensor mapped onto
    our `wrn`.

    Example: trustvision robust import Carmon2019Unlabeled.pt --dataset cifar10 --like runs/std-...
    """
    from trustvision.robust.commands.import_model import import_zoo

    try:
        run = import_zoo(checkpoint, dataset=dataset, eps=eps, like=like, runs_dir=runs_dir)
    except EXPECTED as err:
        raise fail(err) from None
    summary = run.read_summary()
    _log(f"{summary['zoo']['architecture']}, {summary['parameters']:,} parameters; run: {run.path}")


@robust_app.command("mix")
def mix(
    config: ModelsConfigArg = None,
    overrides: MixOverridesArg = None,
    run_dir: RunDirOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Mix a standard and a robust model: alpha sweep (kind=fixed) or mixing network (kind=adaptive).

    Example: trustvision robust mix standard=runs/std-... robust=runs/rob-... kind=fixed
    """
    from trustvision.report.console import ConsoleReporter
    from trustvision.robust.commands.mix import run_mix
    from trustvision.robust.config import MixConfig

    try:
        cfg = command_config(MixConfig, config, overrides, print_config=print_config)
        run = run_mix(cfg, run_path=run_dir, reporter=ConsoleReporter(console), log=_log)
    except EXPECTED as err:
        raise fail(err) from None
    summary = run.read_summary()
    if "alpha" in summary:
        _log(
            f"chosen on validation images: alpha {summary['alpha']:g}, s_g "
            f"{summary['temperature_std']:g}, s_h {summary['temperature_rob']:g}; "
            f"trade-off plot: {run.plots_dir / 'tradeoff.png'}"
        )
    elif "gamma_bias" in summary:
        chosen = summary["selection"]["selected_by"]
        _log(
            f"gamma bias {summary['gamma_bias']:g}, scale {summary['gamma_scale']:g}, alpha in "
            f"[{summary['alpha_low']:g}, {summary['alpha_high']:g}], s_g "
            f"{summary['temperature_std']:g}, s_h {summary['temperature_rob']:g} "
            f"(chosen by {chosen}); the gate per epoch: {run.plots_dir / 'gate.png'}"
        )
    images = (summary.get("selection") or {}).get("validation_images") or {}
    if imported := images.get("imported_bases"):
        _log(
            f"note: {', '.join(imported)} was imported; its authors' training images may "
            "include the validation images these knobs were chosen on"
        )
    _log(f"run directory: {run.path}")


@robust_app.command("eval")
def evaluate(
    config: ModelsConfigArg = None,
    overrides: EvalOverridesArg = None,
    run_dir: RunDirOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """AutoAttack (per-point worst case) on a base model or a mix, with gradient-masking checks.

    Writes summary.json and a RobustBench-style model_info.json. Resumable with --run-dir.
    Example: trustvision robust eval model=runs/robust-mix-... eval.subset=500
    """
    from trustvision.robust.commands.eval import run_eval
    from trustvision.robust.config import EvalConfig

    try:
        cfg = command_config(EvalConfig, config, overrides, print_config=print_config)
        run = run_eval(cfg, run_path=run_dir, log=_log)
    except EXPECTED as err:
        raise fail(err) from None
    summary = run.read_summary()
    print_rows([_row_of(summary)])
    print_checks(summary["checks"])
    _log(f"model card: {run.path / 'model_info.json'}")


@robust_app.command("certify")
def certify(
    config: ModelsConfigArg = None,
    overrides: CertifyOverridesArg = None,
    run_dir: RunDirOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Certified accuracy of the mix against l2 radius (randomized smoothing or a Lipschitz bound).

    Example: trustvision robust certify standard=runs/std-... robust=runs/gauss-...
    """
    from trustvision.robust.commands.certify import run_certify
    from trustvision.robust.config import CertifyConfig

    try:
        cfg = command_config(CertifyConfig, config, overrides, print_config=print_config)
        run = run_certify(cfg, run_path=run_dir, log=_log)
    except EXPECTED as err:
        raise fail(err) from None
    _log(f"certified-accuracy plot: {run.plots_dir / 'certified.png'}; run directory: {run.path}")


@robust_app.command("demo")
def demo(
    config: Annotated[
        Path, typer.Argument(help="A pipeline config (configs/robust/demo_*, bench_*).")
    ] = DEMO_CONFIG,
    overrides: DemoOverridesArg = None,
    work: Annotated[
        Path | None, typer.Option(help="Work directory (resumed if it exists; default: a new one).")
    ] = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train standard + robust models, sweep the fixed mix, AutoAttack every model, print a table.

    Example: trustvision robust demo configs/robust/demo_mnist.yaml
    """
    from trustvision.report.console import ConsoleReporter
    from trustvision.robust.commands.demo import run_pipeline
    from trustvision.robust.config import PipelineConfig

    try:
        cfg = command_config(
            PipelineConfig, config, overrides, print_config=print_config, default=DEMO_CONFIG
        )
        work = work or Path(cfg.runs_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        started = time.perf_counter()
        report = run_pipeline(cfg, work, reporter=ConsoleReporter(console), log=_log)
    except EXPECTED as err:
        raise fail(err) from None
    print_rows(report["rows"])
    for row in report["rows"]:
        if row["masking_suspected"]:
            _log(f"[bold yellow]masking suspected for {row['model']}[/]")
            print_checks(row["checks"])
    _log(
        f"fixed mix chosen on validation images: alpha {report['alpha']:g}, s_g "
        f"{report['temperature_std']:g}, s_h {report['temperature_rob']:g}; "
        f"trade-off plot: {report['tradeoff_plot']}"
    )
    _log(f"work directory: {work} ({time.perf_counter() - started:.0f} s)")


def _row_of(summary: dict[str, Any]) -> dict[str, Any]:
    from trustvision.robust.commands.report import row

    return row(summary["model_kind"], summary)


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The results table: clean (full test set) and AutoAttack accuracy, time per attack below."""
    headers = ["model", "clean", "AutoAttack", "95% CI", "n", "PGD", "AA s", "img/s", "checks"]
    cells = []
    for r in rows:
        low, high = r["autoattack_ci95"]
        cells.append(
            [
                r["model"],
                f"{r['clean_acc']:.2%}",
                f"{r['autoattack_acc']:.1%}",
                f"{100 * low:.1f}-{100 * high:.1f}",
                str(r["n_autoattack"]),
                f"{r['pgd_acc']:.1%}",
                f"{r['total_seconds']:.0f}",
                f"{r['images_per_s']:.2f}" if r["images_per_s"] else "-",
                "masking?" if r["masking_suspected"] else "ok",
            ]
        )
    console.print(fitted_table(None, headers, cells))
    for r in rows:
        per_attack = ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
        console.print(f"  {r['model']}: {per_attack}", highlight=False)


def print_checks(checks: list[dict[str, Any]]) -> None:
    """One line per gradient-masking check."""
    marks = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]not run[/]"}
    for check in checks:
        console.print(
            f"  {marks[check['passed']]}  {check['name']}: {check['detail']}", highlight=False
        )


if __name__ == "__main__":  # `python -m trustvision.robust.cli demo` before it is mounted
    robust_app()
