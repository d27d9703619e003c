"""The numbers of benchmarks/fed_compare.py: one finished run's (headline, validation-chosen
round, per-class accuracy, timing), a method's over seeds, and FedLoGe minus each rival seed
by seed."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import yaml
from common import mean_std
from fed_compare_kept import config_digest
from fed_compare_report import COLUMNS, RIVALS


def numbers(run: Path) -> dict[str, Any]:
    """The headline numbers, per-class accuracy and timing of one finished run."""
    summary = json.loads((run / "summary.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_seconds = [
        r["round_seconds"] - r.get("eval_seconds", 0.0) for r in history if "round_seconds" in r
    ]
    headline, selected = summary["headline"], summary.get("selected", {})
    config = yaml.safe_load((run / "config.yaml").read_text())
    return {
        **{key: headline.get(key, math.nan) for key, _ in COLUMNS},
        "selected_generic": selected.get("generic", {}).get("generic_acc", math.nan),
        "selected_local": selected.get("local", {}).get("local_acc", math.nan),
        "selected_rounds": {kind: pick["round"] for kind, pick in selected.items()},
        "lr": config["optim"]["lr"],
        "config_sha256": config_digest(config),
        "options": summary["options"],
        "seconds_per_round": statistics.median(train_seconds),
        # absent for methods without a generic model (FedPer)
        "generic_per_class": summary["final"]["generic"].get("generic", {}).get("per_class"),
        "history": [
            {k: r[k] for k in ("round", "generic_acc", "local_acc_masked") if k in r}
            for r in history
        ],
        "train_counts": summary["data"]["train_counts"],
        "rounds": summary["rounds"],
        "run": str(run),
        "machine": where(summary["environment"]),
    }


def where(environment: dict[str, Any]) -> str:
    """The machine and device a run trained on, as its summary recorded them."""
    device = environment.get("gpu") or environment["device"]
    return f"{environment['machine']}; {device}; torch {environment['torch']}"


def summarise_per_class(per_seed: list[dict[str, Any]]) -> list[float] | None:
    """Generic accuracy per class, mean over seeds; None for a method without a global model."""
    per_class = [row.get("generic_per_class") for row in per_seed]
    if not all(per_class):
        return None
    return [statistics.fmean(values) for values in zip(*per_class, strict=True)]


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in COLUMNS] + ["seconds_per_round"]
    stats: dict[str, Any] = {key: mean_std([row[key] for row in per_seed]) for key in keys}
    stats["generic_per_class"] = summarise_per_class(per_seed)
    stats["train_counts"] = per_seed[0].get("train_counts")
    stats["machines"] = sorted({row["machine"] for row in per_seed})
    stats["seeds"] = [row.get("seed") for row in per_seed]  # None: a row from before they were
    stats["kept_from"] = sorted({row["reported_by"] for row in per_seed if row.get("kept")})
    first = per_seed[0]
    stats["config"] = {"optim.lr": first["lr"], "options": first["options"]}
    # Every number: the config chosen on validation (or the defaults, untuned), and the
    # columns "@ val round" at the round validation picked; nothing is chosen on test.
    stats["selected_by"] = "validation" if all(r["tuned"] for r in per_seed) else "defaults"
    return stats


def paired(block: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """FedLoGe minus each rival (`RIVALS`) on the seeds both ran, seed by seed, with the
    differences' mean and std; rivals sharing no seed with FedLoGe are left out."""
    if "fedloge" not in block:
        return {}

    def by_seed(algorithm: str, key: str) -> dict[int, float]:
        rows = [r for r in block[algorithm] if r.get("seed") is not None]
        values = {r["seed"]: r.get(key) for r in rows}
        return {s: float(v) for s, v in values.items() if isinstance(v, int | float)}

    def untuned(algorithm: str) -> bool:
        return not all(r["tuned"] for r in block[algorithm])

    out: dict[str, dict[str, Any]] = {}
    for key, rivals in RIVALS:
        ours = by_seed("fedloge", key)
        for rival in (r for r in rivals if r in block):
            theirs = by_seed(rival, key)
            seeds = sorted(set(ours) & set(theirs))
            if not seeds:
                continue
            differences = [ours[s] - theirs[s] for s in seeds]
            stats = mean_std(differences)
            pair = {"seeds": seeds, "differences": differences, **stats}
            # one side tuned, the other not: no verdict (fed_compare_report.not_judged)
            if len(at_defaults := [a for a in ("fedloge", rival) if untuned(a)]) == 1:
                pair["at_defaults"] = at_defaults
            out.setdefault(rival, {})[key] = pair
    return out
