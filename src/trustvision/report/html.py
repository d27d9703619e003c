"""`trustvision report`: one self-contained HTML page for runs, a comparison or a sweep.

Everything comes from the run directories (summary.json, config.yaml, plots/*.png; a sweep's
sweep.json, spec.yaml and sweep.png), rendered with a Jinja2 template
(templates/report.html.j2). Figures are inlined as data URIs, so the page makes no network
request and can be mailed or archived as one file; links to run directories are relative
to the page.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from trustvision.config import flatten
from trustvision.errors import ConfigError
from trustvision.files import write_atomic
from trustvision.runs import RunDir

# (label, dotted summary key): the numbers a run's headline shows when it has them.
HEADLINE = (
    ("test top-1", "test.top1"),
    ("validation top-1", "validation.top1"),
    ("generic accuracy", "headline.generic_acc"),
    ("local accuracy", "headline.local_acc"),
    ("generic validation accuracy", "headline.generic_val_acc"),
    ("local validation accuracy", "headline.local_val_acc_masked"),
    ("clean accuracy", "clean_acc"),
    ("AutoAttack accuracy", "autoattack.robust_acc"),
    ("alpha", "alpha"),
    ("parameters", "parameters"),
    ("MACs", "macs"),
    ("epochs", "epochs"),
    ("rounds", "rounds"),
    ("wall seconds", "wall_seconds"),
)
ROW_TOP1 = re.compile(r"^rows\.([^.]+)\.top1$")  # a compact run's rows
FALLBACK_NUMBERS = 12
ENVIRONMENT = ("machine", "device", "cpu_threads", "torch", "trustvision", "git_commit")


def relative_path(path: Path, out_dir: Path) -> str:
    """`path` relative to the report (what the page shows: no absolute path of this machine)."""
    relative = Path(os.path.relpath(path, out_dir)).as_posix()
    return relative if relative.startswith((".", "/")) else f"./{relative}"


def local_link(path: Path, out_dir: Path) -> str:
    """`path` relative to the report, as a link that is always a path: percent-encoded, so
    that `#`, `?` and `%` in a folder's name stay part of it, and a folder named like
    `javascript:...` cannot read as a URL scheme (escaping leaves it as it is)."""
    return urllib.parse.quote(relative_path(path, out_dir))


@dataclass
class Cell:
    text: str
    href: str | None = None


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]


@dataclass
class RunView:
    """What the page shows of one run directory (or sweep)."""

    anchor: str
    title: str
    kind: str
    path: str
    href: str
    status: str
    headline: list[tuple[str, str]]
    numbers: dict[str, float] = field(default_factory=dict)  # by label, for the comparison
    images: list[tuple[str, str]] = field(default_factory=list)
    environment: list[tuple[str, str]] = field(default_factory=list)
    config: str = ""
    table: Table | None = None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def shown(key: str, value: float) -> str:
    """An accuracy as a percentage, a count with separators, anything else to 4 digits."""
    last = key.rsplit(".", 1)[-1]
    if ("acc" in last or last == "top1") and 0 <= value <= 1:
        return f"{100 * value:.2f}%"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4g}"


def headline(summary: dict[str, Any]) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """The headline rows of a summary (label, shown value) and the raw numbers by label."""
    flat = {k: v for k, v in flatten(summary).items() if is_number(v)}
    chosen = [(label, key) for label, key in HEADLINE if key in flat]
    chosen += [(f"{m.group(1)} top-1", key) for key in flat if (m := ROW_TOP1.match(key))]
    if not chosen:  # a kind of run this page does not know: its first numbers
        skip = ("environment.", "per_class", "history")
        chosen = [(k, k) for k in flat if not k.startswith(skip)][:FALLBACK_NUMBERS]
    rows = [(label, shown(key, flat[key])) for label, key in chosen]
    return rows, {label: float(flat[key]) for label, key in chosen}


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figures(paths: list[Path]) -> list[tuple[str, str]]:
    return [(p.stem.replace("_", " "), data_uri(p)) for p in sorted(paths) if p.is_file()]


def environment(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, str(record[key])) for key in ENVIRONMENT if record.get(key) is not None]


def run_view(path: Path, *, out_dir: Path, anchor: str) -> RunView:
    """A run directory of any command."""
    run = RunDir.open(path)
    summary = run.read_summary()
    rows, numbers = headline(summary)
    return RunView(
        anchor=anchor,
        title=path.name,
        kind=kind_of(summary),
        path=relative_path(path, out_dir),
        href=local_link(path, out_dir),
        status=str(summary.get("status", "not finished (no summary.json)")),
        headline=rows,
        numbers=numbers,
        images=figures(list(run.plots_dir.glob("*.png"))),
        environment=environment(summary.get("environment", {})),
        config=run.config_path.read_text(),
    )


def kind_of(summary: dict[str, Any]) -> str:
    """Which command made a run, read from what its summary holds."""
    if "algorithm" in summary:
        return "federated"
    if "deployed" in summary:
        return "compact"
    if summary.get("kind") in {"base", "mix", "eval", "certify"}:
        return f"robust {summary['kind']}"
    return "train" if summary else "unfinished"


def sweep_view(path: Path, *, out_dir: Path, anchor: str) -> RunView:
    """A sweep directory: its trials (linked to their runs), its plot and its choice."""
    report = json.loads((path / "sweep.json").read_text())
    chosen = report.get("chosen") or {}
    rows = [
        [
            Cell(str(t["number"])),
            Cell(", ".join(f"{k}={v}" for k, v in t.get("params", {}).items())),
            Cell(_pct(t.get("validation"))),
            Cell(_pct(t.get("test"))),
            Cell(str(t.get("state", ""))),
            # run_dir is relative to the sweep directory (sweep.json travels with it)
            Cell("run", local_link(path / t["run_dir"], out_dir)) if t.get("run_dir") else Cell(""),
        ]
        for t in report.get("trials", [])
    ]
    objective = report.get("objective", {})
    headline_rows = [
        (
            "objective (validation)",
            f"{objective.get('direction', '')} {objective.get('metric', '')}",
        ),
        ("chosen trial", str(chosen.get("number", "none"))),
        ("chosen by", str(report.get("selected_by", ""))),
        ("trials done", f"{report.get('trials_done', 0)} of {report.get('trials_planned', 0)}"),
    ]
    spec = path / "spec.yaml"
    return RunView(
        anchor=anchor,
        title=f"sweep {report.get('name', path.name)}",
        kind="sweep",
        path=relative_path(path, out_dir),
        href=local_link(path, out_dir),
        status="finished" if report.get("trials_done") == report.get("trials_planned") else "open",
        headline=headline_rows,
        images=figures(list(path.glob("*.png"))),
        environment=[("machine", str(report.get("machine", "")))],
        config=spec.read_text() if spec.is_file() else "",
        table=Table(["trial", "params", "validation", "test", "state", "run"], rows),
    )


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if is_number(value) and 0 <= value <= 1 else str(value or "")


def expand(paths: list[Path]) -> list[Path]:
    """Run and sweep directories as given, and the run directories inside any other folder."""
    found: list[Path] = []
    for path in paths:
        if (path / "config.yaml").is_file() or (path / "sweep.json").is_file():
            found.append(path)
        elif path.is_dir():
            inside = sorted(p.parent for p in path.rglob("config.yaml") if p.parent != path)
            found += [p for p in inside if not any(q in p.parents for q in inside)]
            if not inside:
                raise ConfigError(f"`{path}` holds no run directory (no config.yaml under it)")
        else:
            raise ConfigError(f"`{path}` is not a run directory, a sweep or a folder of runs")
    return found


def comparison(views: list[RunView]) -> dict[str, Any] | None:
    """A table of the headline numbers two or more runs share, one row per run."""
    if len(views) < 2:
        return None
    labels = [label for label, _ in HEADLINE] + sorted(
        {label for v in views for label in v.numbers if label.endswith(" top-1")}
    )
    columns = [c for c in dict.fromkeys(labels) if sum(c in v.numbers for v in views) >= 2]
    rows = [
        {
            "anchor": v.anchor,
            "title": v.title,
            "cells": [dict(v.headline).get(c, "") for c in columns],
        }
        for v in views
    ]
    return {"columns": columns, "rows": rows}


def render(views: list[RunView], *, title: str) -> str:
    env = Environment(
        loader=PackageLoader("trustvision.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    return env.get_template("report.html.j2").render(
        title=title,
        written=time.strftime("%Y-%m-%d %H:%M"),
        views=views,
        comparison=comparison(views),
    )


def write_report(paths: list[Path], out: Path, *, title: str | None = None) -> Path:
    """The HTML page of `paths` (runs, sweeps, folders of runs) written to `out`."""
    out_dir = out.resolve().parent
    found = [p.resolve() for p in expand([Path(p) for p in paths])]
    common = Path(os.path.commonpath(found)) if len(found) > 1 else None
    views = []
    for index, path in enumerate(found):
        make = sweep_view if (path / "sweep.json").is_file() else run_view
        try:
            view = make(path, out_dir=out_dir, anchor=f"run-{index + 1}")
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSON errors included
            raise ConfigError(
                f"`{path}` holds a damaged summary.json or sweep.json ({type(err).__name__}: "
                f"{err}): write it again, or leave that run out of the report"
            ) from err
        if common is not None and view.kind != "sweep":  # runs of one name stay apart
            view.title = str(path.relative_to(common))
        views.append(view)
    title = title or (views[0].title if len(views) == 1 else f"{len(views)} runs compared")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, render(views, title=title))
    return out
