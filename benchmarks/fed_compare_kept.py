"""What benchmarks/fed_compare.py keeps of its earlier report: the rows of runs this machine
does not hold (a new machine, a cleaned runs folder, a setting not asked for), seed by seed,
and which of them stand in for a run of the config chosen now, so that it is not trained
again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from common import in_settings_order, read_results

from trustvision.sweep.imported import by_name

Job = tuple[str, str, int]  # (setting, algorithm, seed)


def chosen_config(sweeps: Path, setting: str, algorithm: str) -> Path | None:
    """The config benchmarks/fed_sweep.py chose on validation for `algorithm`, if any."""
    config = sweeps / setting / f"{algorithm}.chosen.yaml"
    return config if config.is_file() else None


def read_report(path: Path) -> dict[str, Any]:
    """The earlier report at `path` (empty where there is none); a damaged one is a clear
    error saying how to restore it."""
    body = read_results(path, "fed_compare.py", check=check_report)
    return {"runs": {}, "results": {}} if body is None else body


def check_report(body: dict[str, Any]) -> object:
    """`body`'s rows by setting and algorithm and its results by setting, raising where it is
    not what benchmarks/fed_compare.py writes."""
    rows = {
        setting: {algorithm: [dict(row) for row in list(rows)] for algorithm, rows in block.items()}
        for setting, block in dict(body["runs"]).items()
    }
    return rows, {setting: dict(block) for setting, block in dict(body["results"]).items()}


def reported_rows(earlier: dict[str, Any]) -> list[tuple[Job, dict[str, Any]]]:
    """Every row of the earlier report with its (setting, algorithm, seed), marked `kept` with
    the command that measured it (a row kept before keeps its own)."""
    source = earlier.get("meta", {}).get("command")
    return [
        ((setting, algorithm, row.get("seed")), {"reported_by": source, **row, "kept": True})
        for setting, block in earlier["runs"].items()
        for algorithm, rows in block.items()
        for row in rows
    ]


def config_digest(config: dict[str, Any]) -> str:
    """A run config's SHA-256 but for its seed and runs folder, with paths (CIFAR-10's
    `data.source`) by name: the same config in a checkout elsewhere has the same digest."""
    kept = {k: v for k, v in config.items() if k not in {"seed", "runs_dir"}}
    return hashlib.sha256(json.dumps(by_name(kept), sort_keys=True).encode()).hexdigest()


def stands_in(row: dict[str, Any], setting: str, algorithm: str, sweeps: Path) -> bool:
    """Whether a reported row of a seed measured the config chosen now for its method: the
    same config but for seed and runs folder (rows of older reports record only the learning
    rate and options, which must then match)."""
    chosen = chosen_config(sweeps, setting, algorithm)
    if chosen is None or not row.get("tuned") or row.get("seed") is None:
        return False
    config = yaml.safe_load(chosen.read_text())
    if "config_sha256" in row:
        return bool(row["config_sha256"] == config_digest(config))
    return (row.get("lr"), row.get("options")) == (
        config["optim"]["lr"],
        config["algorithm"]["options"],
    )


def with_kept(
    raw: dict[str, dict[str, list[dict[str, Any]]]],
    earlier: list[tuple[Job, dict[str, Any]]],
    sweeps: Path,
) -> dict[str, Any]:
    """`raw` plus the `earlier` report's rows that this invocation found no run of (a new
    machine, a cleaned runs folder, a setting not asked for): the seeds a method lacks here
    where their rows measured the config chosen now. A row of another config is dropped; so is
    every row of a method whose choice is unknown here (no chosen config in `sweeps`) beside
    runs of it, while without runs its rows stay as the report had them. Settings come in the
    order of FED_SETTINGS."""
    merged = {
        setting: {a: list(rows) for a, rows in block.items()} for setting, block in raw.items()
    }
    measured = {(setting, a) for setting, block in raw.items() for a in block}
    for (setting, algorithm, seed), row in earlier:
        rows = merged.setdefault(setting, {}).setdefault(algorithm, [])
        if seed in {r.get("seed") for r in rows} and seed is not None:
            continue
        if chosen_config(sweeps, setting, algorithm) is None:
            keep = (setting, algorithm) not in measured  # nothing to check it against
        else:  # a row of a config no longer chosen would be reported as tuned
            keep = stands_in(row, setting, algorithm, sweeps)
        if keep:
            rows.append(row)
    merged = in_settings_order(  # a setting none of whose rows stayed is not reported
        {
            setting: kept
            for setting, block in merged.items()
            if (kept := {a: rows for a, rows in block.items() if rows})
        }
    )
    for block in merged.values():
        for rows in block.values():
            rows.sort(key=lambda r: -1 if r.get("seed") is None else r["seed"])
    return merged


def kept_jobs(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> set[Job]:
    """The (setting, algorithm, seed) of every row `with_kept` carried over: reported, not
    missing."""
    return {
        (setting, algorithm, row.get("seed"))
        for setting, block in raw.items()
        for algorithm, rows in block.items()
        for row in rows
        if row.get("kept")
    }
