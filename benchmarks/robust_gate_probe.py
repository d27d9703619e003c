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
could give. Then it attacks the validation images again with the trained detector in the loop
(attacks that see it, as the adaptive mix's adaptive APGD) and scores that. `--reads` trains
detectors on one base's maps only, to see whose maps carry a difference an attack cannot
steer. Training images come from the mixing network's own training subset (images both bases
trained on); no test image is read.

    .venv/bin/python benchmarks/robust_gate_probe.py --datasets cifar10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import RESULTS, ROOT, run_script, write_results
from robust import CONFIGS
from robust_gate_probe_detect import (
    READS,
    Maps,
    gammas,
    seen_attack_scores,
    train_detector,
)
from robust_gate_probe_report import markdown, plot
from torch import Tensor

from trustvision.config import load_config
from trustvision.data.loader import BatchLoader
from trustvision.errors import ConfigError
from trustvision.robust.attacks import pgd
from trustvision.robust.commands.adaptive import pixel_loader
from trustvision.robust.commands.common import MixInputs, mix_inputs
from trustvision.robust.commands.demo import mix_config
from trustvision.robust.config import PipelineConfig
from trustvision.robust.evaluate import mixnet_train_indices, validation_indices
from trustvision.robust.mixing import MixedClassifier, check_stages, stage_channels
from trustvision.robust.runs import is_finished
from trustvision.runs import machine_summary
from trustvision.seeds import derive_seed


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
    parser.add_argument(
        "--reads",
        nargs="+",
        choices=list(READS),
        default=["both"],
        help="whose maps a detector reads: both bases' (what the mix reads), or one base's",
    )
    parser.add_argument(
        "--adaptive-weight",
        type=float,
        default=0.3,
        help="w of the attacks that see the detector: (1 - w) CE of the detector-gated mix + "
        "w BCE(gamma, 1), as the benchmark's adaptive APGD",
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
    shape = inputs.dataset.image_shape
    counts = (
        len(stage_channels(inputs.standard, shape)),
        len(stage_channels(inputs.robust, shape)),
    )
    for pair in args.stages:
        try:
            check_stages(pair, counts)
        except ConfigError as error:
            raise SystemExit(f"{name}: {error}") from None
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
    val_loader = pixel_loader(
        inputs.dataset, indices["validation"], batch_size=cfg.mixnet.batch_size, device=device
    )
    detectors = [
        detector_record(inputs, maps, val_loader, cfg, args, stages=pair, reads=reads)
        for pair in args.stages
        for reads in args.reads
    ]
    return {
        "command": command_line(),
        "work": str(work),
        "seed": cfg.seed,
        "eps": inputs.eps,
        "pgd_steps": args.steps,
        "adaptive_weight": args.adaptive_weight,
        "width": cfg.mixnet.width,
        "epochs": args.epochs,
        "mix_accuracy": accuracy,
        "attack_seconds": attack_seconds,
        "detectors": detectors,
        "selected_by": "validation",
    }


def detector_record(
    inputs: MixInputs,
    maps: dict[str, dict[str, list[Maps]]],
    val_loader: BatchLoader,
    cfg: PipelineConfig,
    args: argparse.Namespace,
    *,
    stages: tuple[int, int],
    reads: str,
) -> dict[str, Any]:
    """Train one detector; its history, and its separation under attacks that see it."""
    low, high = stages
    tag = f"{low},{high}" if reads == "both" else f"{low},{high}-{reads}"
    detector, history = train_detector(
        maps["train"],
        maps["validation"],
        stages=stages,
        reads=reads,
        width=cfg.mixnet.width,
        epochs=args.epochs,
        seed=derive_seed(cfg.seed, f"gate-probe-{tag}"),
    )
    clean = gammas(detector, maps["validation"]["clean"])
    seen = seen_attack_scores(
        inputs,
        detector,
        val_loader,
        clean,
        steps=args.steps,
        weight=args.adaptive_weight,
        seed=derive_seed(cfg.seed, f"gate-probe-seen-{tag}"),
    )
    print(f"  stages {low},{high} ({reads}) under attacks that see it: {seen}", flush=True)
    best = max(history, key=lambda row: row["auc"])
    return {
        "stages": [low, high],
        "reads": reads,
        "history": history,
        "final": history[-1],
        "best_epoch": best["epoch"],
        "best": best,
        "seen": seen,
    }


SETUP = ("seed", "eps", "pgd_steps", "width", "epochs", "mix_accuracy")


def with_earlier(record: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
    """`record` plus the detectors of an earlier probe of the same set-up (the same attacked
    images: the attacks are seeded) that this one did not train again, marked `earlier`."""
    if earlier is None or any(earlier.get(k) != record[k] for k in SETUP):
        return record

    def key(detector: dict[str, Any]) -> tuple[tuple[int, ...], str]:
        return tuple(detector["stages"]), detector.get("reads", "both")

    trained = {key(d) for d in record["detectors"]}
    kept = [d | {"earlier": True} for d in earlier["detectors"] if key(d) not in trained]
    return record | {"detectors": record["detectors"] + kept}


def command_line() -> str:
    return ("python benchmarks/robust_gate_probe.py " + " ".join(sys.argv[1:])).strip()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "robust-gate-probe"
    for name in args.datasets:
        cfg = load_config(PipelineConfig, CONFIGS[name], [f"threads={args.threads}"])
        previous = args.out / f"{stem}.json"  # other data sets' probes stay in the report
        records = json.loads(previous.read_text())["datasets"] if previous.is_file() else {}
        record = with_earlier(probe(name, cfg, args.work / name, args), records.get(name))
        plot(name, record, args.out / f"robust_gateprobe_{name.replace('-', '')}.png")
        records[name] = record
        body = {"machine": machine_summary(), "datasets": records}
        print(f"wrote {write_results(stem, markdown(records, args.out), body, out=args.out)}")


if __name__ == "__main__":
    run_script(main)
