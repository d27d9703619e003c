"""Progress on the console: a rich bar on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def format_record(record: dict[str, Any]) -> str:
    """One line for an epoch (or round) record: the numbers a person watches (validation, the
    one a choice may read, before test)."""
    unit = "round" if "round" in record else "epoch"
    parts = [f"{unit} {record.get(unit, '?')}"]
    for key, fmt in (
        ("train_loss", "loss {:.4f}"),
        ("train_acc", "train {:.2%}"),
        ("val_acc", "val {:.2%}"),
        ("test_acc", "test {:.2%}"),
        ("lr", "lr {:.3g}"),
        ("train_images_per_s", "{:.0f} img/s"),
    ):
        if key in record:
            parts.append(fmt.format(record[key]))
    return "  ".join(parts)


class ConsoleReporter:
    """Shows training progress: a live bar when stdout is a terminal, else plain lines."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live = sys.stdout.isatty()
        self.progress: Progress | None = None
        self.task: Any = None

    def start(self, title: str, total: int) -> None:
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(title, total=total)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def finish(self, record: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.console.print(format_record(record), highlight=False)
