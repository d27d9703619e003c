"""The gate probe: can the mixing network's inputs tell clean from attacked images at all?

The gate check (robust_gate_check.py) trains the mixing network with the authors' recipe, in
which the training attacks change as the gate learns and the loss mixes detection with
classification; when no recipe separates clean from attacked images, that leaves open whether
the recipe or the budget failed, or whether the bases' feature maps the network reads do not
carry the difference. This answers the second question directly. It attacks a fixed set of
images once (PGD on the cross-entropy of the bases' 50/50 mix, eps as in the benchmark's
config, a random start, step 2.5 eps / steps), caches both bases' feature maps of the clean and
the attacked copies, and trains the configured mixing network's architecture as a plain
detector on them (BCE: clean 0, attacked 1; AdamW, cosine schedule) for each pair of stages it
is asked to read: (0, 1) is what the mix reads. After every epoch it scores held-out images
the bases never trained on (validation images): the mean of sigmoid(gamma) on clean and on
attacked copies, the accuracy at 0.5, and the AUC. Training images come from the mixing
network's own training subset (images both bases trained on); no test image is read.

    .venv/bin/python benchmarks/robust_gate_probe.py --datasets cifar10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from common import RESULTS, ROOT, write_results
from robust import CONFIGS
from torch import Tensor

from trustvision.config import load_config
from trustvision.data.loader import BatchLoader, to_tensor
from trustvision.robust.attacks import pgd
from trustvision.robust.commands.common import MixInputs, mix_inputs
from trustvision.robust.commands.demo import mix_config
from trustvision.robust.config import PipelineConfig
from trustvision.robust.evaluate import mixnet_train_indices, validation_indices
from trustvision.robust.mixing import MixedClassifier, MixingNetwork
from trustvision.robust.runs import is_finished
from trustvision.runs import machine_summary
from trustvision.seeds import derive_seed

Maps = list[Tensor]  # per stage: both bases' maps, concatenated on channels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=list(CONFIGS), default=["cifar10"])
    parser.add_argument("--work", type=Path, default=ROOT / "runs/robust-bench")
    parser.add_argument("--train-images", type=int, default=4000, help="clean training images")
    parser.add_argument("--val-images", type=int, default=1000, help="clean validation images")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps per attacked image")
    parser.add_argument("--epochs", type=int, default=15, help="detector training epochs")
    parser.add_argument(
        "--stages",
        nargs="+",
        default=["0,1", "1,2"],
        help="pairs of base stages the detector reads (low,high); 0,1 is the mix's",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def pixels(inputs: MixInputs, indices: Any, *, batch: int, device: torch.device) -> BatchLoader:
    dataset = inputs.dataset
    return BatchLoader(
        to_tensor(dataset.train.images[indices]),
        to_tensor(dataset.train.labels[indices]),
        batch_size=batch,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
        normalize=False,
    )


def attacked_maps(
    inputs: MixInputs, loader: BatchLoader, *, steps: int, seed: int
) -> tuple[list[Maps], list[Maps], float, float]:
    """Every stage's maps of both bases on the clean and the PGD-attacked images, and the 50/50
    mix's accuracy on each (the attack is real)."""
    mix = MixedClassifier(inputs.standard, inputs.robust, alpha=0.5).eval()
    eps = inputs.eps
    clean: list[Maps] = []
    attacked: list[Maps] = []
    correct = [0, 0]
    torch.manual_seed(seed)
    for x, y in loader.epoch(0):
        x_adv = pgd(
            lambda a, b: F.nll_loss(mix(a), b, reduction="none"),
            x,
            y,
            eps=eps,
            step_size=2.5 * eps / steps,
            steps=steps,
        )
        with torch.no_grad():
            for store, images, k in ((clean, x, 0), (attacked, x_adv, 1)):
                correct[k] += int((mix(images).argmax(1) == y).sum())
                store.append(stage_maps(inputs, images))
    total = len(loader.images)
    return clean, attacked, correct[0] / total, correct[1] / total


def stage_maps(inputs: MixInputs, x: Tensor) -> Maps:
    _, std = inputs.standard.forward_with_maps(x)
    _, rob = inputs.robust.forward_with_maps(x)
    return [torch.cat([s, r], 1) for s, r in zip(std, rob, strict=True)]


def auc(clean: Tensor, attacked: Tensor) -> float:
    """P(score of an attacked image > score of a clean one), ties counting half."""
    scores = torch.cat([clean, attacked])
    ranks = scores.argsort().argsort().double() + 1
    for value in scores.unique():  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_clean, n_adv = len(clean), len(attacked)
    return float((ranks[n_clean:].sum() - n_adv * (n_adv + 1) / 2) / (n_clean * n_adv))


def scores(net: MixingNetwork, maps: list[Maps], low: int, high: int) -> Tensor:
    net.eval()
    with torch.no_grad():
        return torch.cat([torch.sigmoid(net([m[low]], [m[high]])) for m in maps])


def train_detector(
    train: tuple[list[Maps], list[Maps]],
    val: tuple[list[Maps], list[Maps]],
    *,
    stages: tuple[int, int],
    width: int,
    epochs: int,
    seed: int,
) -> list[dict[str, float]]:
    """Train a fresh mixing network on (clean 0, attacked 1) maps, each clean batch with its
    attacked copies; its validation scores per epoch."""
    low, high = stages
    torch.manual_seed(seed)
    first = train[0][0]
    net = MixingNetwork(
        low_channels=first[low].shape[1], high_channels=first[high].shape[1], width=width
    ).to(first[0].device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(train[0]))
    history = []
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(epoch))
        for i in order.tolist():  # a batch's clean images with their attacked copies: the
            clean, attacked = train[0][i], train[1][i]  # BatchNorms see both kinds at once
            gamma = net(
                [torch.cat([clean[low], attacked[low]])],
                [torch.cat([clean[high], attacked[high]])],
            )
            n = len(clean[low])
            target = torch.cat([gamma.new_zeros(n), gamma.new_ones(n)])
            loss = F.binary_cross_entropy_with_logits(gamma, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        s_clean, s_adv = scores(net, val[0], low, high), scores(net, val[1], low, high)
        history.append(
            {
                "epoch": epoch + 1,
                "score_clean": float(s_clean.mean()),
                "score_attacked": float(s_adv.mean()),
                "accuracy": float((s_clean < 0.5).sum() + (s_adv >= 0.5).sum())
                / (len(s_clean) + len(s_adv)),
                "auc": auc(s_clean, s_adv),
            }
        )
        print(f"  stages {low},{high} epoch {epoch + 1}: {fmt(history[-1])}", flush=True)
    return history


def fmt(row: dict[str, float]) -> str:
    return (
        f"score clean {row['score_clean']:.3f} / attacked {row['score_attacked']:.3f}, "
        f"accuracy {100 * row['accuracy']:.1f}%, AUC {row['auc']:.3f}"
    )


def probe(name: str, cfg: PipelineConfig, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Attack, cache and train one detector per stage pair on the bases in `work`."""
    missing = [b for b in ("standard", "robust") if not is_finished(work / b)]
    if missing:
        raise SystemExit(
            f"{name}: the bases {missing} are not trained in {work}: run "
            f"`benchmarks/robust.py --datasets {name} --no-adaptive` first"
        )
    device = torch.device("cpu")
    inputs = mix_inputs(mix_config(cfg, work, "adaptive"), device)
    labels = inputs.dataset.train.labels
    train_idx = mixnet_train_indices(labels, inputs.bases, subset=args.train_images, seed=cfg.seed)
    val_idx = validation_indices(labels, inputs.bases)[: args.val_images]
    started = time.perf_counter()
    batch = cfg.mixnet.batch_size
    sets = {}
    for split, idx in (("train", train_idx), ("validation", val_idx)):
        loader = pixels(inputs, idx, batch=batch, device=device)
        seed = derive_seed(cfg.seed, f"gate-probe-{split}")
        *maps, acc_clean, acc_attacked = attacked_maps(inputs, loader, steps=args.steps, seed=seed)
        sets[split] = (maps, {"images": len(idx), "clean": acc_clean, "attacked": acc_attacked})
        print(
            f"{name}: {len(idx)} {split} images attacked; the 50/50 mix's accuracy "
            f"{100 * acc_clean:.1f}% clean, {100 * acc_attacked:.1f}% attacked",
            flush=True,
        )
    attack_seconds = time.perf_counter() - started
    detectors = []
    for pair in args.stages:
        low, high = (int(v) for v in pair.split(","))
        history = train_detector(
            sets["train"][0],
            sets["validation"][0],
            stages=(low, high),
            width=cfg.mixnet.width,
            epochs=args.epochs,
            seed=derive_seed(cfg.seed, f"gate-probe-{pair}"),
        )
        best = max(history, key=lambda row: row["auc"])
        detectors.append(
            {
                "stages": [low, high],
                "history": history,
                "final": history[-1],
                "best_epoch": best["epoch"],
                "best": best,
            }
        )
    return {
        "eps": inputs.eps,
        "pgd_steps": args.steps,
        "width": cfg.mixnet.width,
        "epochs": args.epochs,
        "mix_accuracy": {split: record for split, (_, record) in sets.items()},
        "attack_seconds": attack_seconds,
        "detectors": detectors,
        "selected_by": "validation",
    }


def plot(name: str, record: dict[str, Any], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for det in record["detectors"]:
        epochs = [row["epoch"] for row in det["history"]]
        stages = ",".join(str(s) for s in det["stages"])
        left.plot(epochs, [row["auc"] for row in det["history"]], marker="o", label=stages)
        for kind, style in (("clean", "-"), ("attacked", "--")):
            values = [row[f"score_{kind}"] for row in det["history"]]
            right.plot(epochs, values, style, label=f"{stages} {kind}")
    left.axhline(0.5, color="grey", lw=0.8)
    left.set(xlabel="epoch", ylabel="validation AUC", title=f"{name}: detection AUC")
    right.set(xlabel="epoch", ylabel="mean sigmoid(gamma)", title="clean (-) vs attacked (--)")
    left.legend(title="stages")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(records: dict[str, dict[str, Any]], command: str, out: Path) -> str:
    lines = [
        "# The gate probe: do the mixing network's inputs tell clean from attacked images?",
        "",
        f"Written by `{command}`; machine: {machine_summary()}.",
        "",
        "The mixing network's architecture trained as a plain detector (clean 0, attacked 1) on "
        "both bases' feature maps of a fixed set of training images and their PGD-attacked "
        "copies (PGD on the bases' 50/50 mix), scored on validation images the bases never "
        "trained on; no test image is read. Stages (0, 1) are what the mix reads. `score`: "
        "mean sigmoid(gamma); a gate that separates as the issue asks (alpha differing by 0.2) "
        "needs scores at least that far apart. The best epoch is chosen by validation AUC.",
    ]
    for name, rec in records.items():
        acc = rec["mix_accuracy"]
        lines += [
            "",
            f"## {name} (eps {rec['eps']:.4f}, PGD-{rec['pgd_steps']}, width {rec['width']}, "
            f"{rec['epochs']} epochs)",
            "",
            f"The 50/50 mix's accuracy: training images ({acc['train']['images']}) "
            f"{100 * acc['train']['clean']:.1f}% clean, {100 * acc['train']['attacked']:.1f}% "
            f"attacked; validation images ({acc['validation']['images']}) "
            f"{100 * acc['validation']['clean']:.1f}% clean, "
            f"{100 * acc['validation']['attacked']:.1f}% attacked. Attacks took "
            f"{rec['attack_seconds']:.0f} s.",
            "",
            "| stages | score clean | score attacked | separation | accuracy | AUC "
            "| best AUC (epoch) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for det in rec["detectors"]:
            final = det["final"]
            lines.append(
                f"| {','.join(str(s) for s in det['stages'])} | {final['score_clean']:.3f} "
                f"| {final['score_attacked']:.3f} "
                f"| {final['score_attacked'] - final['score_clean']:+.3f} "
                f"| {100 * final['accuracy']:.1f}% | {final['auc']:.3f} "
                f"| {det['best']['auc']:.3f} ({det['best_epoch']}) |"
            )
        image = f"robust_gateprobe_{name.replace('-', '')}.png"
        if (out / image).is_file():
            lines += ["", f"![{name} gate probe]({image})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    stem = "robust-gate-probe"
    previous = args.out / f"{stem}.json"
    checked = {}
    for name in args.datasets:
        cfg = load_config(PipelineConfig, CONFIGS[name], [f"threads={args.threads}"])
        checked[name] = probe(name, cfg, args.work / name, args)
        plot(name, checked[name], args.out / f"robust_gateprobe_{name.replace('-', '')}.png")
    records = json.loads(previous.read_text())["datasets"] if previous.is_file() else {}  # kept
    records.update(checked)
    command = "python benchmarks/robust_gate_probe.py " + " ".join(sys.argv[1:])
    body = {"command": command.strip(), "machine": machine_summary(), "datasets": records}
    print(
        f"wrote {write_results(stem, markdown(records, command.strip(), args.out), body, out=args.out)}"
    )


if __name__ == "__main__":
    main()
