"""Data-parallel training on this machine's CPU: `trustvision train` as one process (1 and 2
threads) against two gloo processes of one thread under torchrun, same config and data.

The figure is the training images per second of each epoch as the run records it (the
training loop only: evaluation and start-up excluded); every layout runs `--rounds` times,
alternating, and the median is reported. On a 2-core CPU two processes compete with nothing
else only when the machine is otherwise idle: stop other work first.

    .venv/bin/python benchmarks/ddp_scaling.py     # writes docs/results/ddp.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, run_script, write_results

from trustvision.runs import machine_summary

CONFIG = ROOT / "configs/train/mnist_cnn.yaml"
LAYOUTS = {  # name: (processes, threads per process)
    "1 process x 1 thread": (1, 1),
    "1 process x 2 threads": (1, 2),
    "2 processes x 1 thread (DDP, gloo)": (2, 1),
}


def run_once(processes: int, threads: int, overrides: list[str]) -> dict[str, Any]:
    """One `trustvision train`; its per-epoch throughput and final test accuracy."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["train", str(CONFIG), f"runs_dir={tmp}/runs", f"threads={threads}", *overrides]
        launcher = [sys.executable, "-m", "trustvision"]
        if processes > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            launcher += [f"--nproc_per_node={processes}", "-m", "trustvision"]
        env = os.environ | {"OMP_NUM_THREADS": str(threads), "TRUSTVISION_TRACKING": "off"}
        subprocess.run([*launcher, *args], check=True, capture_output=True, env=env)
        (run,) = Path(tmp, "runs").iterdir()
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run / "summary.json").read_text())
    return {
        "images_per_s": [r["train_images_per_s"] for r in records],
        "train_images": records[0]["train_images"],
        "test_top1": summary["test"]["top1"],
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    base = rows[0]["images_per_s"]
    lines = [
        "# Data-parallel training on the CPU (torchrun, gloo)",
        "",
        f"Written by `{meta['command']}` on {meta['date']}; machine: {meta['machine']}.",
        "",
        f"`trustvision train {CONFIG.relative_to(ROOT)}` with `{' '.join(meta['overrides'])}`:",
        f"{rows[0]['train_images']:,} training images an epoch, the global batch the same in",
        "every layout. Images per second of the training loop (median over epochs and rounds,",
        f"{meta['rounds']} rounds alternating between layouts); test top-1 of the last round.",
        "",
        "| layout | images/s | vs 1 process x 1 thread | test top-1 |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['images_per_s']:,.0f} | {r['images_per_s'] / base:.2f}x | "
            f"{100 * r['test_top1']:.2f}% |"
        )
    lines += [
        "",
        "Two processes hold a copy of the data and the model each and exchange gradients over",
        "loopback (gloo) every step; BatchNorm normalises each half-batch on its own, so their",
        "accuracy differs slightly from one process's (docs/distributed.md).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    overrides = [f"data.train_subset={args.train_subset}", f"epochs={args.epochs}"]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in LAYOUTS}
    for round_ in range(args.rounds):
        for name, (processes, threads) in LAYOUTS.items():
            results[name].append(run_once(processes, threads, overrides))
            print(f"round {round_ + 1}: {name}: {results[name][-1]['images_per_s']}", flush=True)
    rows = [
        {
            "layout": name,
            "processes": LAYOUTS[name][0],
            "threads": LAYOUTS[name][1],
            "images_per_s": statistics.median(v for r in runs for v in r["images_per_s"]),
            "train_images": runs[-1]["train_images"],
            "test_top1": runs[-1]["test_top1"],
            "rounds": runs,
        }
        for name, runs in results.items()
    ]
    meta = {
        "command": "python benchmarks/ddp_scaling.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_summary(),
        "overrides": overrides,
        "rounds": args.rounds,
    }
    print(write_results("ddp", markdown(rows, meta), {"meta": meta, "rows": rows}).read_text())


if __name__ == "__main__":
    run_script(main)
