"""What every sub-command line interface shares: the error exit, and reading the command tree.

It sits below the systems' CLIs (federated, compact, robust, sweep) and above the core, so that
a system's CLI never imports the top-level `trustvision.cli`, which mounts it.
"""

from __future__ import annotations

import click
import typer
from rich.console import Console

from trustvision.errors import ConfigError, DivergenceError, TrustvisionError

err_console = Console(stderr=True)


def fail(err: TrustvisionError) -> typer.Exit:
    """Print a user error in red and return the exit to raise (1: diverged, 2: bad input)."""
    err_console.print(f"[bold red]error:[/] {err}", highlight=False)
    return typer.Exit(1 if isinstance(err, DivergenceError) else 2)


def command_takes_resume(root: click.Command, command: str) -> bool:
    """Check `command` (words, e.g. `fed run`) is a sub-command under `root`, the running
    program's command group (`click.get_current_context().find_root().command`); True when it
    has a `--resume` option."""
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
    return any(param.name == "resume" for param in node.params)
