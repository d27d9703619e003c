"""Federated algorithms side by side on one setting: generic and local accuracy, by group.

Trains every named algorithm with the same config (same data split, seed and budget) and
writes one table: final and best generic accuracy (balanced test set), FedLoGe's universal
SSE-C accuracy, local accuracy with unseen classes masked and unmasked, generic
head/middle/tail, and wall time. With `--runs`, summarises finished run directories instead
of training.

    .venv/bin/python benchmarks/fed_compare.py configs/fed/fmnist_lt_cpu.yaml \\
        --algorithms fedavg fedloge --out docs/results/fed_fmnist_lt
    .venv/bin/python benchmarks/fed_compare.py --runs runs/fmnist-lt-* --out /tmp/compare
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from trustvision.config import load_config
from trustvision.federated.config import FedConfig
from trustvision.federated.runner import run_federated
from trustvision.train.runs import RunDir

COLUMNS = [
    ("generic_acc", "generic"),
    ("best_generic", "best generic"),
    ("universal_acc", "universal"),
    ("local_acc_masked", "local (masked)"),
    ("local_acc_unmasked", "local (unmasked)"),
    ("best_local", "best local"),
    ("generic_head", "head"),
    ("generic_middle", "middle"),
    ("generic_tail", "tail"),
]


def row_of(run: RunDir) -> dict[str, Any]:
    """The numbers of one finished run."""
    summary = run.read_summary()
    if summary.get("status") != "finished":
        raise SystemExit(
            f"`{run.path}` has not finished: resume it with `trustvision fed run --resume`"
        )
    headline = summary["headline"]
    return {
        "algorithm": summary["algorithm"],
        "run": str(run.path),
        **{key: headline.get(key, math.nan) for key, _ in COLUMNS},
        "best_generic": summary["best"]["generic_acc"]["value"],
        "best_local": summary["best"]["local_acc"]["value"],
        "rounds": summary["rounds"],
        "wall_seconds": summary["wall_seconds"],
        "ssec_sha256": summary.get("ssec_sha256"),
    }


def percent(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) and math.isfinite(value) else "-"


def markdown(rows: list[dict[str, Any]], *, title: str, config: str) -> str:
    """The table for people."""
    lines = [
        f"# {title}",
        "",
        f"Config: `{config}`. Accuracies in %, final round unless marked best; generic on the",
        "balanced test set, local = unweighted mean over clients of their local test sets,",
        "masked = classes a client never trained on get -inf logits (every method alike).",
        "Head/middle/tail: generic per-class accuracy grouped by training frequency (75%/95%).",
        "",
        "| algorithm | " + " | ".join(label for _, label in COLUMNS) + " | wall (s) |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for row in rows:
        cells = [percent(row[key]) for key, _ in COLUMNS]
        lines.append(
            f"| {row['algorithm']} | " + " | ".join(cells) + f" | {row['wall_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", help="a configs/fed/*.yaml to train with")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--algorithms", nargs="+", default=["fedavg", "fedloge"])
    parser.add_argument(
        "--runs", nargs="+", type=Path, help="summarise these run directories instead"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/fed_compare"))
    parser.add_argument("--title", default="Federated algorithms compared")
    args = parser.parse_args()
    if args.runs:
        runs = [RunDir.open(path) for path in args.runs]
        config = str(runs[0].config_path)
    else:
        if args.config is None:
            parser.error("give a CONFIG to train with, or --runs RUN_DIR ...")
        runs = []
        for name in args.algorithms:
            cfg = load_config(FedConfig, args.config, args.overrides)
            if cfg.algorithm.name != name:  # the config's own options belong to its algorithm
                cfg = load_config(FedConfig, args.config, [*args.overrides, f"algorithm={name}"])
            runs.append(run_federated(cfg))
        config = " ".join([args.config, *args.overrides])
    rows = [row_of(run) for run in runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown(rows, title=args.title, config=config))
    args.out.with_suffix(".json").write_text(
        json.dumps({"config": config, "rows": rows}, indent=2) + "\n"
    )
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
