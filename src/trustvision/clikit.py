"""What every sub-command line interface shares: the error exit, reading a command's config
(a file, `key=value` overrides, `--resume`, `--print-config`) and reading the command tree.

It sits below the systems' CLIs (federated, compact, robust, sweep) and above the core, so that
a system's CLI never imports the top-level `trustvision.cli`, which mounts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trustvision.errors import ConfigError, TrustvisionError, environment_failure, exit_code

ConfigT = TypeVar("ConfigT", bound=BaseModel)
err_console = Console(stderr=True)
out_console = Console()

PrintConfigOpt = Annotated[
    bool,
    typer.Option(
        "--print-config", help="Print the resolved config (every key, with defaults) and exit."
    ),
]
ResumeOpt = Annotated[
    Path | None, typer.Option(help="Continue this run directory from its newest good checkpoint.")
]
CheckpointOpt = Annotated[
    str | None,
    typer.Option(
        help="With --resume: the checkpoint to start from, by name (the run's checkpoints/ lists "
        "them: epoch-0002 of a training run, round-00010 of a federated one). Default: the "
        "newest that passes its checks."
    ),
]


def command_group(help: str, *, data_parallel: frozenset[str] = frozenset()) -> typer.Typer:
    """A command group as every trustvision CLI makes one: help when called bare, errors as
    one line (no pretty tracebacks), no shell-completion options; under torchrun only its
    `data_parallel` subcommands run (`refuse_under_torchrun`)."""

    def refuse(ctx: typer.Context) -> None:
        refuse_under_torchrun(ctx, data_parallel)

    return typer.Typer(
        help=help,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        callback=refuse,
    )


def refuse_under_torchrun(ctx: typer.Context, data_parallel: frozenset[str]) -> None:
    """Under torchrun, a one-line refusal of any subcommand but those that train
    data-parallel: every process would repeat it and write the same files."""
    from trustvision.train.recipe import one_process_only

    if ctx.invoked_subcommand is not None and ctx.invoked_subcommand not in data_parallel:
        try:
            one_process_only()
        except ConfigError as err:
            raise fail(err) from None


def overrides_help(example: str) -> str:
    """The help of a command's `key=value` arguments, with an example of its own keys."""
    return f"Config overrides as `key=value`, nested keys with dots: `{escape(example)}`."


def overrides_argument(example: str) -> Any:
    """A command's `key=value` arguments (typer's Argument), with an example of its own keys."""
    return typer.Argument(help=overrides_help(example), show_default=False)


def command_config(
    model: type[ConfigT],
    config: Path | None,
    overrides: list[str] | None,
    *,
    resume: Path | None = None,
    checkpoint: str | None = None,
    print_config: bool = False,
    required: str | None = None,
    default: Path | None = None,
) -> ConfigT:
    """The typed config a command runs with: CONFIG plus overrides (a first argument holding
    `=` that is no file is an override: `robust eval model=runs/x`), or with `resume` the run's
    own config.yaml (then CONFIG and overrides are refused). `required` (a hint where to find
    one) makes a CONFIG file or overrides mandatory; `checkpoint` is refused without `resume`.
    `default` is the command's default CONFIG, kept when its first argument is an override.
    `print_config` prints it and exits."""
    from trustvision.config import dump_config, load_config

    if config is not None and "=" in str(config) and not config.exists():
        config, overrides = default, [str(config), *(overrides or [])]
    if checkpoint is not None and resume is None:
        raise ConfigError("`--checkpoint` chooses where `--resume RUN_DIR` starts: give both")
    if resume is not None:
        if config is not None or overrides:
            raise ConfigError(
                "`--resume` continues a run with its own config.yaml: give no CONFIG or overrides"
            )
        from trustvision.runs import RunDir

        config = RunDir.open(resume).config_path
    elif required is not None and config is None and not overrides:
        raise ConfigError(f"give a CONFIG file or `key=value` overrides ({required})")
    cfg = load_config(model, config, overrides)
    if print_config:
        out_console.print(dump_config(cfg), highlight=False)
        raise typer.Exit()
    return cfg


# What a command turns into one line and an exit code instead of a traceback.
EXPECTED = (TrustvisionError, OSError)


def print_failure(err: TrustvisionError | OSError) -> int:
    """Print an expected failure in red as one line; its exit code (README, "Exit codes": 2 bad
    input, 1 diverged, 3 the machine refused, e.g. a full disk)."""
    if not isinstance(err, TrustvisionError):  # an OSError no layer below has explained
        err = environment_failure(err)
    # escaped: a message quotes user input (`[low, high]`, a key `[/foo]`), never markup
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    return exit_code(err)


def fail(err: TrustvisionError | OSError) -> typer.Exit:
    """Print an expected failure (`print_failure`) and return the exit to raise."""
    return typer.Exit(print_failure(err))


def command_options(root: click.Command, command: str) -> set[str]:
    """Check `command` (words, e.g. `fed run`) is a sub-command under `root`, the running
    program's command group (`click.get_current_context().find_root().command`); the names of
    its parameters (`resume` where it takes `--resume`)."""
    node = root
    for depth, word in enumerate(command.split()):
        if not isinstance(node, click.Group) or word not in node.commands:
            where = " ".join(["trustvision", *command.split()[:depth]])
            known = sorted(node.commands) if isinstance(node, click.Group) else []
            raise ConfigError(
                f"`command: {command}`: `{where}` has no sub-command `{word}`"
                + (f"; it has {', '.join(f'`{k}`' for k in known)}" if known else "")
            )
        node = node.commands[word]
    if isinstance(node, click.Group):
        raise ConfigError(
            f"`command: {command}` is a group: name one of its sub-commands "
            f"({', '.join(f'`{k}`' for k in sorted(node.commands))})"
        )
    return {str(param.name) for param in node.params}


def fitted_table(title: str | None, headers: list[str], rows: list[list[str]]) -> Table:
    """A table whose cells are never cut short: where the terminal (or a log file's 80
    columns) is too narrow, headers and cells fold onto more lines instead of ending in an
    ellipsis. The first column, the row's name, is left-aligned; the rest right-aligned. Text
    is shown as written: a label such as `fedavg [gap_cnn]` is not read as rich markup."""
    table = Table(title=title)
    for index, header in enumerate(headers):
        table.add_column(escape(header), justify="left" if index == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table
