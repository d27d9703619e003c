"""What evaluation costs a federated run: its share of the wall time at `eval_every=5`.

Trains FedAvg and FedLoGe on the Fashion-MNIST-LT CPU config (both backbones) for 10 rounds,
evaluating every 5 (test and validation together, as every run does), one process and one
torch thread each, one run at a time, and reads the seconds each round and each evaluation
took from the runs' metrics.jsonl. Writes docs/results/fed-eval-cost.{md,json}.

    .venv/bin/python benchmarks/fed_eval_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, run_script, write_results

CONFIG = ROOT / "configs/fed/fmnist_lt_cpu.yaml"
BACKBONES = {"mnist_cnn": [], "gap_cnn": ["model.name=gap_cnn", "model.kwargs={}"]}
ALGORITHMS = ["fedavg", "fedloge"]
ROUNDS = 10


def run(algorithm: str, backbone: str, runs: Path) -> dict[str, Any]:
    """Train one short run and measure it."""
    directory = runs / backbone / algorithm
    command = [
        sys.executable,
        "-m",
        "trustvision",
        "fed",
        "run",
        str(CONFIG),
        *BACKBONES[backbone],
        *([] if algorithm == "fedloge" else [f"algorithm={algorithm}"]),
        f"rounds={ROUNDS}",
        "eval_every=5",
        "device=cpu",
        f"runs_dir={directory}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    run_dir = sorted(directory.glob("*/summary.json"))[-1].parent
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    evals = [r["eval_seconds"] for r in records if "eval_seconds" in r]
    rounds = sum(r["round_seconds"] for r in records)
    return {
        "algorithm": algorithm,
        "backbone": backbone,
        "eval_seconds": evals,
        "train_seconds_per_round": (rounds - sum(evals)) / len(records),
        "eval_share": sum(evals) / rounds,
        "wall_seconds": summary["wall_seconds"],
        "test_images": summary["data"]["test_images"],
        "validation_images": sum(summary["data"]["client_val_images"]),
        "run": str(run_dir),
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# What evaluation costs a federated run",
        "",
        f"Written by `{meta['command']}` on {meta['date']}; machine: {meta['machine']}; its runs "
        "one after another, one torch thread each; other jobs may have shared the cores (load "
        f"average when it began: {meta['load']}), which slows training and evaluation alike.",
        "",
        f"Fashion-MNIST-LT CPU config, {ROUNDS} rounds, evaluated every 5: each evaluation is "
        "the balanced test set (every global predictor) plus every client's local test set "
        "and validation images. Share: evaluation seconds over all rounds' seconds.",
        "",
        "| backbone | algorithm | train s/round | s per evaluation | evaluation share |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        per_eval = ", ".join(f"{s:.2f}" for s in r["eval_seconds"])
        lines.append(
            f"| {r['backbone']} | {r['algorithm']} | {r['train_seconds_per_round']:.2f} | "
            f"{per_eval} | {100 * r['eval_share']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    from trustvision.runs import machine_summary

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/fed-eval-cost")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the .md from the .json, train nothing"
    )
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((args.out / "fed-eval-cost.json").read_text())
        write_results("fed-eval-cost", markdown(saved["rows"], saved["meta"]), saved, out=args.out)
        return
    load = f"{os.getloadavg()[0]:.2f}"
    rows = [run(a, b, args.runs) for b in BACKBONES for a in ALGORITHMS]
    meta = {
        "command": "python benchmarks/fed_eval_cost.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_summary(),
        "load": load,
    }
    body = {"meta": meta, "rows": rows}
    print(write_results("fed-eval-cost", markdown(rows, meta), body, out=args.out).read_text())


if __name__ == "__main__":
    run_script(main)
