"""Where a gradient-masking check of docs/results/robust.md fails, what is behind it.

Reads finished `benchmarks/robust.py` work directories.

1. `square<=white-box` (Square fooled points the white-box attacks missed): for the images of
   the adaptive mix's AutoAttack evaluation that only Square fooled, the mixing network's
   alpha on the clean image; Square re-run on them (AutoAttack's standard settings: 5000
   queries, p_init 0.8, seed 0), alpha at the adversarial images and which base they fool.
   For comparison, alpha on all attacked images, clean and after our PGD-20 on the composite.
2. `eps->large` (PGD accuracy still above 5% at 3 eps): PGD accuracy of the robust base and
   both mixes at 3, 4 and 6 eps with 20 and 100 steps on the first 100 test images. A masked
   model keeps its accuracy as eps or steps grow; a slow tail falls to 0.

    .venv/bin/python benchmarks/robust_diagnostics.py --square mnist fashion-mnist cifar10 \\
        --eps-tail cifar10            # writes docs/results/robust_diagnostics.{md,json}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import ROOT, run_script, write_results
from pyautoattack.square import SquareAttack

from trustvision.robust.attacks import cross_entropy_loss, pgd
from trustvision.robust.evaluate import pgd_accuracy, recorded_dataset, test_pixels
from trustvision.robust.runs import data_of, load_mix, load_model, read_finished
from trustvision.runs import environment_info

TAIL_MODELS = ("robust", "fixed-mix", "adaptive-mix")  # the standard model is at 0 from 1 eps
TAIL_FACTORS = (3, 4, 6)
TAIL_STEPS = (20, 100)
TAIL_IMAGES = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--square", nargs="*", default=[], help="data sets for part 1")
    parser.add_argument("--eps-tail", nargs="*", default=[], help="data sets for part 2")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/robust-bench")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def square_only(work: Path) -> dict[str, Any]:
    """Alpha of the adaptive mix on the images only Square fooled, before and after Square."""
    torch.manual_seed(0)  # PGD's random start
    mix = load_mix(work / "adaptive-mix").eval()
    evaluation = work / "eval-adaptive-mix"
    chunks = json.loads((evaluation / "autoattack-chunks.json").read_text())["chunks"]
    fooled_by = [f for key in sorted(chunks, key=int) for f in chunks[key]["fooled_by"]]
    eps = read_finished(evaluation)["eps"]
    x, y = test_pixels(recorded_dataset(data_of(work / "adaptive-mix")), count=len(fooled_by))
    square = torch.tensor([f == "square" for f in fooled_by])
    x_pgd = pgd(cross_entropy_loss(mix), x, y, eps=eps, step_size=2.5 * eps / 20, steps=20)
    with torch.no_grad():
        alpha_clean = torch.sigmoid(mix.forward_with_gamma(x)[1])
        alpha_pgd = torch.sigmoid(mix.forward_with_gamma(x_pgd)[1])
    attack = SquareAttack(
        mix, p_init=0.8, n_queries=5000, eps=eps, norm="Linf", n_restarts=1, seed=0, device="cpu"
    )
    started = time.perf_counter()
    adv = attack.perturb(x[square], y[square])
    seconds = time.perf_counter() - started
    with torch.no_grad():
        out, gamma = mix.forward_with_gamma(adv)
        standard_wrong = mix.standard(adv).argmax(1) != y[square]
        robust_wrong = mix.robust(adv).argmax(1) != y[square]
    fooled = out.argmax(1) != y[square]
    alpha_adv = torch.sigmoid(gamma)
    return {
        "eps": eps,
        "images": len(fooled_by),
        "square_only": int(square.sum()),
        "alpha_clean_all": float(alpha_clean.mean()),
        "alpha_clean_quantiles": [float(alpha_clean.quantile(q)) for q in (0.05, 0.5, 0.95)],
        "alpha_pgd_all": float(alpha_pgd.mean()),
        "alpha_clean_square_only": float(alpha_clean[square].mean()) if square.any() else None,
        "refooled": int(fooled.sum()),
        "alpha_adv_refooled": float(alpha_adv[fooled].mean()) if fooled.any() else None,
        "standard_wrong": int((standard_wrong & fooled).sum()),
        "robust_wrong": int((robust_wrong & fooled).sum()),
        "square_seconds": seconds,
    }


def eps_tail(work: Path) -> dict[str, Any]:
    """PGD accuracy of the robust models at large multiples of eps, with 20 and 100 steps."""
    torch.manual_seed(0)
    eps = read_finished(work / "eval-robust")["eps"]
    x, y = test_pixels(recorded_dataset(data_of(work / "robust")), count=TAIL_IMAGES)
    acc: dict[str, dict[str, float]] = {}
    for name in TAIL_MODELS:
        model = load_model(work / name).eval()
        acc[name] = {
            f"{factor}x{steps}": pgd_accuracy(model, x, y, eps=factor * eps, steps=steps)
            for factor in TAIL_FACTORS
            for steps in TAIL_STEPS
        }
    return {"eps": eps, "images": TAIL_IMAGES, "acc": acc}


def square_table(found: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "## Square fooled what the white-box attacks missed (`square<=white-box`)",
        "",
        "Alpha = sigmoid(gamma') is the weight of the robust base in the adaptive mix.",
        "",
        "| data | attacked images | only Square fooled | alpha on clean images: mean [5%, 50%, 95%] "
        "| alpha after PGD-20, all | alpha, clean, Square-only images | Square re-run fools "
        "| alpha at those adversarial images | of those, standard base wrong | robust base wrong "
        "| Square seconds |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in found.items():
        q = ", ".join(f"{v:.3f}" for v in r["alpha_clean_quantiles"])
        clean_sq, adv = (
            "n/a" if v is None else f"{v:.3f}"
            for v in (r["alpha_clean_square_only"], r["alpha_adv_refooled"])
        )
        lines.append(
            f"| {name} (eps {r['eps']:.3g}) | {r['images']} | {r['square_only']} | "
            f"{r['alpha_clean_all']:.3f} [{q}] | {r['alpha_pgd_all']:.3f} | {clean_sq} | "
            f"{r['refooled']} | {adv} | {r['standard_wrong']} | {r['robust_wrong']} | "
            f"{r['square_seconds']:.0f} |"
        )
    return [*lines, ""]


def tail_table(found: dict[str, dict[str, Any]]) -> list[str]:
    columns = [f"{f}x{s}" for f in TAIL_FACTORS for s in TAIL_STEPS]
    lines = [
        "## PGD accuracy at large eps (`eps->large`)",
        "",
        "PGD (cross-entropy, random start, step 2.5 eps / steps) on the first "
        f"{TAIL_IMAGES} test images; columns: multiple of eps x steps.",
        "",
        "| data | model | " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for name, r in found.items():
        for model, acc in r["acc"].items():
            cells = " | ".join(f"{100 * acc[c]:.0f}%" for c in columns)
            lines.append(f"| {name} (eps {r['eps']:.3g}) | {model} | {cells} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment_info(torch.device("cpu"))
    command = "python benchmarks/robust_diagnostics.py " + " ".join(sys.argv[1:])
    square, tail = {}, {}
    for name in args.square:
        print(f"== {name}: Square-only images", flush=True)
        square[name] = square_only(args.work / name)
    for name in args.eps_tail:
        print(f"== {name}: PGD at large eps", flush=True)
        tail[name] = eps_tail(args.work / name)
    lines = [
        "# Adaptive smoothing: the failed masking checks, looked into",
        "",
        f"Written by `{command.strip()}` on {time.strftime('%Y-%m-%d')}; machine: {env['machine']}, "
        f"torch {env['torch']}, {args.threads} thread(s). Models: the work directories of "
        "`benchmarks/robust.py` (docs/results/robust.md).",
        "",
        *(square_table(square) if square else []),
        *(tail_table(tail) if tail else []),
    ]
    body = {"environment": env, "command": command.strip(), "square": square, "eps_tail": tail}
    print(f"wrote {write_results('robust_diagnostics', chr(10).join(lines), body)}")


if __name__ == "__main__":
    run_script(main)
