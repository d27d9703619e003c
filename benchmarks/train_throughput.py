"""Training throughput: our loop against a minimal hand-written PyTorch loop, same model and data.

For each workload the same batches are used by both loops. The minimal loop iterates over
batches made beforehand (so it pays nothing for data); our loop makes its batches on the fly
through `BatchLoader` (gather, cast, augment, normalise) and adds its checks (finite loss,
running accuracy, scheduler). Data loading + augmentation alone is timed too. Rounds
alternate between the loops and the median is reported.

    .venv/bin/python benchmarks/train_throughput.py   # writes docs/results/throughput.{md,json}
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import CIFAR_ZIP, ROOT, run_script, write_results

from trustvision.config import AugmentConfig, DataConfig, OptimConfig
from trustvision.data.dataset import load_dataset
from trustvision.data.loader import build_loaders
from trustvision.models import create_model
from trustvision.runs import environment_info
from trustvision.train.loop import Accel, cross_entropy, train_epoch
from trustvision.train.optim import build_optimizer, build_scheduler, parameter_groups

WORKLOADS = [
    {
        "title": "MNIST CNN on MNIST",
        "model": "mnist_cnn",
        "data": DataConfig(name="mnist", batch_size=128),
        "steps": 120,
    },
    {
        "title": "ResNet-20 on CIFAR-10 (JPEG copy), crop + flip",
        "model": "resnet20",
        "data": DataConfig(
            name="cifar10",
            source=str(CIFAR_ZIP),
            batch_size=128,
            augment=AugmentConfig(crop_padding=4, hflip=True),
        ),
        "steps": 30,
    },
]


def setup(workload: dict, device: torch.device):
    dataset = load_dataset(workload["data"].name, from_path=workload["data"].source)
    loader, _, _ = build_loaders(dataset, workload["data"], seed=0, device=device)
    torch.manual_seed(0)
    model = create_model(
        workload["model"], num_classes=dataset.num_classes, in_channels=dataset.image_shape[0]
    )
    model = model.to(device)
    optim_cfg = OptimConfig(lr=0.01)
    optimizer = build_optimizer(optim_cfg, parameter_groups([model]))
    scheduler = build_scheduler(
        optimizer, optim_cfg, total_steps=10**6, steps_per_epoch=len(loader)
    )
    return loader, model, optimizer, scheduler


def batches(loader, steps: int):
    """The first `steps` batches of epoch 0."""
    out = []
    for i, batch in enumerate(loader.epoch(0)):
        if i == steps:
            break
        out.append(batch)
    return out


def minimal_loop(model, optimizer, scheduler, premade) -> float:
    """The floor: the textbook PyTorch step over batches already in memory; returns images/s."""
    model.train()
    start = time.perf_counter()
    for x, y in premade:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    return sum(len(y) for _, y in premade) / (time.perf_counter() - start)


def our_loop(model, optimizer, scheduler, loader, steps, accel) -> float:
    """`train_epoch`, making its batches through the loader; returns images/s."""
    record = train_epoch(
        model,
        (b for i, b in zip(range(steps), loader.epoch(0), strict=False)),
        optimizer=optimizer,
        objective=cross_entropy(),
        accel=accel,
        scheduler=scheduler,
    )
    return record["train_images_per_s"]


def data_only(loader, steps: int) -> float:
    """Images/s of batch making alone (gather, cast, augment, normalise)."""
    start = time.perf_counter()
    seen = 0
    for i, (x, y) in enumerate(loader.epoch(1)):  # noqa: B007 (x is synchronised below)
        if i == steps:
            break
        seen += len(y)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def measure(workload: dict, device: torch.device, rounds: int) -> dict:
    loader, model, optimizer, scheduler = setup(workload, device)
    steps = workload["steps"]
    premade = batches(loader, steps)
    accel = Accel(device, amp=False, channels_last=False)
    minimal_loop(model, optimizer, scheduler, premade[:5])  # warm-up
    ours, floor = [], []
    for index in range(rounds):  # alternate which loop goes first, so order favours neither
        runs = [
            lambda: floor.append(minimal_loop(model, optimizer, scheduler, premade)),
            lambda: ours.append(our_loop(model, optimizer, scheduler, loader, steps, accel)),
        ]
        for run in runs if index % 2 == 0 else runs[::-1]:
            run()
    data = [data_only(loader, max(steps, 50)) for _ in range(rounds)]
    return {
        "title": workload["title"],
        "model": workload["model"],
        "parameters": model.num_parameters(),
        "batch_size": workload["data"].batch_size,
        "steps_per_round": steps,
        "rounds": rounds,
        "minimal_images_per_s": statistics.median(floor),
        "ours_images_per_s": statistics.median(ours),
        "data_only_images_per_s": statistics.median(data),
        "ratio": statistics.median(ours) / statistics.median(floor),
    }


def write_report(rows: list[dict], machine: str, out: Path) -> None:
    lines = [
        "# Training throughput",
        "",
        "Written by `benchmarks/train_throughput.py`; do not edit by hand.",
        "",
        f"Machine: {machine}.",
        "",
        "Images per second, median over rounds in which the two loops take turns going first. *Minimal* is the textbook PyTorch",
        "step over batches made beforehand (it pays nothing for data); *ours* is",
        "`trustvision.train.loop.train_epoch` making each batch through `BatchLoader`",
        "(gather, cast, augment, normalise) with its checks (finite loss, running accuracy,",
        "per-batch scheduler). *Data only* is batch making alone.",
        "",
        "| workload | params | batch | minimal img/s | ours img/s | ours / minimal | data only img/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['title']} | {r['parameters']:,} | {r['batch_size']} | {r['minimal_images_per_s']:.0f} "
            f"| {r['ours_images_per_s']:.0f} | {r['ratio']:.3f} | {r['data_only_images_per_s']:.0f} |"
        )
    lines += [
        "",
        "A ratio a little above 1 is not a mistake: the minimal loop's batches were all made in",
        "advance and are read back from main memory, while ours makes each batch just before",
        "the step that uses it. The two loops alternate within one process, so both see the",
        "same machine load. CIFAR-10 here is the JPEG copy in `../shared/data/cifar10-jpeg.zip`.",
        "",
    ]
    write_results("throughput", "\n".join(lines), {"machine": machine, "rows": rows}, out=out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds per loop (median reported)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment_info(device)
    machine = (
        f"{env['machine']}, {env['cpu_threads']} torch threads, {device}, torch {env['torch']}"
    )
    rows = []
    for workload in WORKLOADS:
        row = measure(workload, device, args.rounds)
        print(json.dumps(row))
        rows.append(row)
    write_report(rows, machine, args.out)
    print(f"wrote {args.out / 'throughput.md'}")


if __name__ == "__main__":
    run_script(main)
