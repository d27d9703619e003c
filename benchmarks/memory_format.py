"""Training and inference speed of the project's models in PyTorch's two memory layouts.

`Accel` puts models and batches in channels-last layout (NHWC in memory) when a config's
`channels_last` is true. This script is the measurement behind applying it on the CPU too:
for every (model, batch size) a system trains, it times a training step (forward, backward,
SGD with momentum), an attack step (forward, backward to the input, as PGD and AutoAttack
take: the robust system's evaluation) and an inference pass in both layouts, on the same synthetic batch, one
torch thread (as the benchmarks run), the two layouts taking turns so that the machine's
drift favours neither; the median over rounds is reported.

    .venv/bin/python benchmarks/memory_format.py   # writes docs/results/memory-format.{md,json}
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import ROOT, run_script, write_results
from torch import nn

from trustvision.models import create_model
from trustvision.runs import environment_info

# (who trains it, model, input shape, batch size, model arguments); batch sizes are the configs'.
WORKLOADS = [
    ("federated, Fashion-MNIST-LT", "mnist_cnn", (1, 28, 28), 8, {"feature_norm": True}),
    ("federated, Fashion-MNIST-LT", "gap_cnn", (1, 28, 28), 8, {}),
    ("federated, CIFAR-10-LT", "resnet8", (3, 32, 32), 8, {}),
    ("robust, MNIST / Fashion-MNIST bases", "smallcnn", (1, 28, 28), 128, {}),
    ("robust, CIFAR-10 bases", "resnet20", (3, 32, 32), 128, {}),
]
NCHW, LAST = "contiguous (NCHW)", "channels-last"
LAYOUTS = {NCHW: torch.contiguous_format, LAST: torch.channels_last}
KINDS = ("train_ms", "attack_ms", "infer_ms")


def timed(run: Callable[[], None], steps: int) -> float:
    """Milliseconds per call of `run`, over `steps` calls (CUDA work waited for)."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    synchronize()
    return (time.perf_counter() - start) / steps * 1000


def runners(
    name: str,
    shape: tuple[int, int, int],
    batch: int,
    kwargs: dict[str, Any],
    layout: torch.memory_format,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Callable[[], None]]]:
    """A training step, an attack step and an inference pass of a fresh seeded model in
    `layout`."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=shape[0], **kwargs).to(device)
    model = model.to(memory_format=layout)
    x = torch.randn(batch, *shape, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def attack_step() -> None:
        model.eval()
        x_adv = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        model(x)

    return model, {"train_ms": train_step, "attack_ms": attack_step, "infer_ms": infer}


def measure(workload: tuple, device: torch.device, rounds: int, budget_ms: float) -> dict:
    system, name, shape, batch, kwargs = workload
    made = {
        label: runners(name, shape, batch, kwargs, fmt, device) for label, fmt in LAYOUTS.items()
    }
    for _, passes in made.values():  # warm-up
        for run in passes.values():
            run()
    steps = max(3, int(budget_ms / max(timed(made[NCHW][1]["train_ms"], 3), 1e-3)))
    times = {kind: {label: [] for label in LAYOUTS} for kind in KINDS}
    for index in range(rounds):
        order = list(LAYOUTS) if index % 2 == 0 else list(LAYOUTS)[::-1]
        for label in order:
            for kind, run in made[label][1].items():
                times[kind][label].append(timed(run, steps))
    median = {
        kind: {label: statistics.median(v) for label, v in t.items()} for kind, t in times.items()
    }
    return {
        "system": system,
        "model": name,
        "parameters": made[NCHW][0].num_parameters(),
        "batch_size": batch,
        "steps_per_round": steps,
        "rounds": rounds,
        **median,
        **{f"{kind[:-3]}_speedup": median[kind][NCHW] / median[kind][LAST] for kind in KINDS},
    }


def write_report(rows: list[dict], machine: str, note: str, out: Path) -> None:
    lines = [
        "# Memory layout: contiguous (NCHW) against channels-last",
        "",
        "Written by `benchmarks/memory_format.py`; do not edit by hand.",
        "",
        f"Machine: {machine}.{note}",
        "",
        "Milliseconds per batch, median over rounds in which the two layouts take turns going",
        "first, the same synthetic batch and the same seeded weights in both: a training step",
        "(forward, backward, SGD with momentum), an attack step (forward, backward to the input:",
        "what PGD and AutoAttack do) and an inference pass. *x* is NCHW time / channels-last time",
        "(above 1: channels-last is faster).",
        "",
        "| used by | model | params | batch | train ms, NCHW / last | x | attack ms, NCHW / last | x | infer ms, NCHW / last | x |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [
            f"{r[kind][NCHW]:.2f} / {r[kind][LAST]:.2f} | {r[kind[:-3] + '_speedup']:.2f}"
            for kind in KINDS
        ]
        lines.append(
            f"| {r['system']} | `{r['model']}` | {r['parameters']:,} | {r['batch_size']} | "
            + " | ".join(cells)
            + " |"
        )
    body = {"machine": machine, "note": note.strip(), "rows": rows}
    write_results("memory-format", "\n".join(lines) + "\n", body, out=out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (median)")
    parser.add_argument(
        "--budget-ms", type=float, default=1500, help="time per layout and round, about"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--note", default="", help="a sentence on the machine's load")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment_info(device)
    machine = f"{env['machine']}, {args.threads} torch thread(s), {device}, torch {env['torch']}"
    rows = []
    for workload in WORKLOADS:
        row = measure(workload, device, args.rounds, args.budget_ms)
        print(json.dumps(row))
        rows.append(row)
    write_report(rows, machine, f" {args.note}" if args.note else "", args.out)
    print(f"wrote {args.out / 'memory-format.md'}")


if __name__ == "__main__":
    run_script(main)
