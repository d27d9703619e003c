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
the bases never trained on (validation images): the mean of sigmoid(gamma) on clean, attacked
and randomly perturbed copies (the control: +-eps noise), the accuracy at 0.5, the AUC and
Youden's J, the largest clean-attacked difference in mean alpha any gate increasing in gamma
could give. Training images come from the mixing network's own training subset (images both
bases trained on); no test image is read.

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
from trustvision.data.loader import BatchLoader
from trustvision.robust.attacks import pgd
from trustvision.robust.commands.adaptive import pixel_loader
from trustvision.robust.commands.common import MixInputs, mix_inputs
from trustvision.robust.commands.demo import mix_config
from trustvision.robust.config import PipelineConfig
from trustvision.robust.evaluate import mixnet_train_indices, validation_indices
from trustvision.robust.mixing import MixedClassifier, MixingNetwork, stage_channels
from trustvision.robust.runs import is_finished
from trustvision.runs import machine_summary
from trustvision.seeds import derive_seed

Maps = dict[int, list[Tensor]]  # a batch's maps per stage: [standard base's, robust base's]


def stage_pair(text: str) -> tuple[int, int]:
    """`low,high` as two stage numbers, the earlier first."""
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}` is not two stage numbers `low,high`") from None
    if not 0 <= low < high:
        raise argparse.ArgumentTypeError(f"`{text}`: need 0 <= low < high")
    return low, high


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
        type=stage_pair,
        default=[(0, 1), (1, 2)],
        help="pairs of base stages the detector reads, `low,high` (default: 0,1 1,2); 0,1 is "
        "what the mix reads",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def attacked_maps(
    inputs: MixInputs, loader: BatchLoader, *, stages: set[int], steps: int, seed: int
) -> tuple[dict[str, list[Maps]], dict[str, float]]:
    """Both bases' maps at `stages` of the clean images, their PGD-attacked copies and (a
    control) copies with random +-eps noise in every pixel; the 50/50 mix's accuracy on each."""
    mix = MixedClassifier(inputs.standard, inputs.robust, alpha=0.5).eval()
    eps = inputs.eps
    maps: dict[str, list[Maps]] = {"clean": [], "attacked": [], "noise": []}
    correct = dict.fromkeys(maps, 0)
    torch.manual_seed(seed)
    for x, y in loader.epoch(0):
        copies = {
            "clean": x,
            "attacked": pgd(
                lambda a, b: F.nll_loss(mix(a), b, reduction="none"),
                x,
                y,
                eps=eps,
                step_size=2.5 * eps / steps,
                steps=steps,
            ),
            "noise": (x + eps * torch.randint_like(x, 2).mul(2).sub(1)).clamp(0, 1),
        }
        with torch.no_grad():
            for kind, images in copies.items():
                correct[kind] += int((mix(images).argmax(1) == y).sum())
                maps[kind].append(stage_maps(inputs, images, stages))
    total = len(loader.images)
    return maps, {kind: count / total for kind, count in correct.items()}


def stage_maps(inputs: MixInputs, x: Tensor, stages: set[int]) -> Maps:
    _, std = inputs.standard.forward_with_maps(x)
    _, rob = inputs.robust.forward_with_maps(x)
    return {k: [std[k], rob[k]] for k in stages}


def auc(clean: Tensor, attacked: Tensor) -> float:
    """P(score of an attacked image > score of a clean one), ties counting half."""
    scores = torch.cat([clean, attacked])
    ranks = scores.argsort().argsort().double() + 1
    for value in scores.unique():  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_clean, n_adv = len(clean), len(attacked)
    return float((ranks[n_clean:].sum() - n_adv * (n_adv + 1) / 2) / (n_clean * n_adv))


def youden(clean: Tensor, attacked: Tensor) -> float:
    """max over thresholds t of P(attacked >= t) - P(clean >= t): the largest difference in
    mean alpha between the two kinds that any gate increasing in this score can give."""
    thresholds = torch.cat([clean, attacked]).unique()
    above_adv = (attacked[None, :] >= thresholds[:, None]).double().mean(1)
    above_clean = (clean[None, :] >= thresholds[:, None]).double().mean(1)
    return float((above_adv - above_clean).max().clamp(min=0))


def gammas(net: MixingNetwork, maps: list[Maps], low: int, high: int) -> Tensor:
    """The detector's raw output (its logit) on every batch of `maps`, in evaluation mode."""
    net.eval()
    with torch.no_grad():
        return torch.cat([net(m[low], m[high]) for m in maps])


def scores(net: MixingNetwork, val: dict[str, list[Maps]], low: int, high: int) -> dict[str, float]:
    """How the detector tells the validation copies apart; AUC and J on the raw logits (a
    sigmoid rounds large ones to 1)."""
    g = {kind: gammas(net, maps, low, high) for kind, maps in val.items()}
    right = (g["clean"] < 0).sum() + (g["attacked"] >= 0).sum()
    return {
        **{f"score_{kind}": float(torch.sigmoid(v).mean()) for kind, v in g.items()},
        "accuracy": float(right) / (len(g["clean"]) + len(g["attacked"])),
        "auc": auc(g["clean"], g["attacked"]),
        "youden": youden(g["clean"], g["attacked"]),
        "auc_noise": auc(g["clean"], g["noise"]),
    }


def train_detector(
    train: dict[str, list[Maps]],
    val: dict[str, list[Maps]],
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
    first = train["clean"][0]
    net = MixingNetwork(
        low_channels=sum(m.shape[1] for m in first[low]),
        high_channels=sum(m.shape[1] for m in first[high]),
        width=width,
    ).to(first[low][0].device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    steps = len(train["clean"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps)
    history = []
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(steps, generator=torch.Generator().manual_seed(seed + epoch))
        for i in order.tolist():  # a batch's clean images with their attacked copies: the
            clean, attacked = train["clean"][i], train["attacked"][i]  # BatchNorms see both
            gamma = net(
                [torch.cat([c, a]) for c, a in zip(clean[low], attacked[low], strict=True)],
                [torch.cat([c, a]) for c, a in zip(clean[high], attacked[high], strict=True)],
            )
            n = len(clean[low][0])
            target = torch.cat([gamma.new_zeros(n), gamma.new_ones(n)])
            loss = F.binary_cross_entropy_with_logits(gamma, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        history.append({"epoch": epoch + 1, **scores(net, val, low, high)})
        print(f"  stages {low},{high} epoch {epoch + 1}: {fmt(history[-1])}", flush=True)
    return history


def fmt(row: dict[str, float]) -> str:
    return (
        f"score clean {row['score_clean']:.3f} / attacked {row['score_attacked']:.3f} / noise "
        f"{row['score_noise']:.3f}, accuracy {100 * row['accuracy']:.1f}%, AUC {row['auc']:.3f}, "
        f"J {row['youden']:.3f}, noise AUC {row['auc_noise']:.3f}"
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
    count = len(stage_channels(inputs.robust, inputs.dataset.image_shape))
    if any(high >= count for _, high in args.stages):
        raise SystemExit(f"{name}: the bases have {count} stages (0 to {count - 1})")
    labels = inputs.dataset.train.labels
    indices = {
        "train": mixnet_train_indices(
            labels, inputs.bases, subset=args.train_images, seed=cfg.seed
        ),
        "validation": validation_indices(labels, inputs.bases)[: args.val_images],
    }
    started = time.perf_counter()
    needed = {k for pair in args.stages for k in pair}
    maps, accuracy = {}, {}
    for split, idx in indices.items():
        loader = pixel_loader(inputs.dataset, idx, batch_size=cfg.mixnet.batch_size, device=device)
        seed = derive_seed(cfg.seed, f"gate-probe-{split}")
        maps[split], acc = attacked_maps(inputs, loader, stages=needed, steps=args.steps, seed=seed)
        accuracy[split] = {"images": len(idx), **acc}
        print(f"{name}: {len(idx)} {split} images; the 50/50 mix's accuracy {acc}", flush=True)
    attack_seconds = time.perf_counter() - started
    detectors = []
    for low, high in args.stages:
        history = train_detector(
            maps["train"],
            maps["validation"],
            stages=(low, high),
            width=cfg.mixnet.width,
            epochs=args.epochs,
            seed=derive_seed(cfg.seed, f"gate-probe-{low},{high}"),
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
        "command": command_line(),
        "work": str(work),
        "seed": cfg.seed,
        "eps": inputs.eps,
        "pgd_steps": args.steps,
        "width": cfg.mixnet.width,
        "epochs": args.epochs,
        "mix_accuracy": accuracy,
        "attack_seconds": attack_seconds,
        "detectors": detectors,
        "selected_by": "validation",
    }


def command_line() -> str:
    return ("python benchmarks/robust_gate_probe.py " + " ".join(sys.argv[1:])).strip()


def plot(name: str, record: dict[str, Any], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for det in record["detectors"]:
        epochs = [row["epoch"] for row in det["history"]]
        stages = ",".join(str(s) for s in det["stages"])
        left.plot(epochs, [row["auc"] for row in det["history"]], marker="o", label=stages)
        for kind, style in (("clean", "-"), ("attacked", "--"), ("noise", ":")):
            values = [row[f"score_{kind}"] for row in det["history"]]
            right.plot(epochs, values, style, label=f"{stages} {kind}")
    left.axhline(0.5, color="grey", lw=0.8)
    left.set(xlabel="epoch", ylabel="validation AUC", title=f"{name}: clean vs attacked")
    right.set(xlabel="epoch", ylabel="mean sigmoid(gamma)", title="clean, attacked, noise")
    left.legend(title="stages")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


INTRO = (
    "The mixing network's architecture trained as a plain detector (clean 0, attacked 1) on "
    "both bases' feature maps of a fixed set of training images (images both bases trained on) "
    "and their PGD-attacked copies (PGD on the cross-entropy of the bases' 50/50 mix), scored on "
    "validation images the bases never trained on; no test image is read. Stages 0,1 are what "
    "the mix reads. After the last epoch: `score`, the mean sigmoid of the detector's output on "
    "clean, attacked and (a control) randomly perturbed copies (+-eps in every pixel); AUC, "
    "attacked vs clean; J (Youden's), the largest difference in mean alpha between attacked and "
    "clean images that any gate increasing in this output could give: a gate separating them by "
    "0.2, as issue 16 asks, needs J well above 0.2. A noise AUC near the attacked one says the "
    "detector sees perturbations, not attacks. The best epoch's AUC is chosen on the same "
    "images, so it is optimistic."
)


def markdown(records: dict[str, dict[str, Any]], out: Path) -> str:
    lines = [
        "# The gate probe: do the mixing network's inputs tell clean from attacked images?",
        "",
        f"Written by benchmarks/robust_gate_probe.py; machine: {machine_summary()}.",
        "",
        INTRO,
    ]
    for name, rec in records.items():
        acc = rec["mix_accuracy"]
        lines += [
            "",
            f"## {name} (eps {rec['eps']:.4f}, PGD-{rec['pgd_steps']}, width {rec['width']}, "
            f"{rec['epochs']} epochs)",
            "",
            f"`{rec['command']}` (bases in `{rec['work']}`, seed {rec['seed']}). The 50/50 mix's "
            "accuracy, clean / attacked / noise: "
            + "; ".join(
                f"{split} images ({a['images']}) {100 * a['clean']:.1f}% / "
                f"{100 * a['attacked']:.1f}% / {100 * a['noise']:.1f}%"
                for split, a in acc.items()
            )
            + f". Attacks took {rec['attack_seconds']:.0f} s.",
            "",
            "| stages | score clean | score attacked | score noise | accuracy | AUC | J "
            "| noise AUC | best AUC (epoch) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for det in rec["detectors"]:
            f = det["final"]
            lines.append(
                f"| {','.join(str(s) for s in det['stages'])} | {f['score_clean']:.3f} "
                f"| {f['score_attacked']:.3f} | {f['score_noise']:.3f} "
                f"| {100 * f['accuracy']:.1f}% | {f['auc']:.3f} | {f['youden']:.3f} "
                f"| {f['auc_noise']:.3f} | {det['best']['auc']:.3f} ({det['best_epoch']}) |"
            )
        image = f"robust_gateprobe_{name.replace('-', '')}.png"
        if (out / image).is_file():
            lines += ["", f"![{name} gate probe]({image})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "robust-gate-probe"
    for name in args.datasets:
        cfg = load_config(PipelineConfig, CONFIGS[name], [f"threads={args.threads}"])
        record = probe(name, cfg, args.work / name, args)
        plot(name, record, args.out / f"robust_gateprobe_{name.replace('-', '')}.png")
        previous = args.out / f"{stem}.json"  # other data sets' probes stay in the report
        records = json.loads(previous.read_text())["datasets"] if previous.is_file() else {}
        records[name] = record
        body = {"machine": machine_summary(), "datasets": records}
        print(f"wrote {write_results(stem, markdown(records, args.out), body, out=args.out)}")


if __name__ == "__main__":
    main()
