"""Why Square beats the white-box attacks on an adaptive mix: the numbers in docs/robust.md.

Reads a finished `benchmarks/robust.py` work directory: the adaptive mix and the per-image
record of its AutoAttack evaluation (which attack fooled each image). For the images that only
Square fooled it reports the mixing network's alpha on the clean image, re-runs Square (same
settings as AutoAttack standard: 5000 queries, p_init 0.8, seed 0) and reports alpha at the
adversarial image and which base it fools. For comparison: alpha on all attacked images, clean
and after our PGD-20 on the whole composite (does the mixing network tell them apart at all?).

    .venv/bin/python benchmarks/robust_square.py --datasets mnist   # writes docs/results/robust_square.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from pyautoattack.square import SquareAttack

from trustvision.robust.attacks import cross_entropy_loss, pgd
from trustvision.robust.evaluate import load_data, test_pixels
from trustvision.robust.runs import data_of, load_mix, read_finished
from trustvision.train.runs import environment_info

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "docs/results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist"])
    parser.add_argument("--work", type=Path, default=ROOT / "runs/robust-bench")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def diagnose(work: Path) -> dict:
    """Alpha of the adaptive mix on the images only Square fooled, before and after Square."""
    mix = load_mix(work / "adaptive-mix").eval()
    evaluation = work / "eval-adaptive-mix"
    chunks = json.loads((evaluation / "autoattack-chunks.json").read_text())["chunks"]
    fooled_by = [f for key in sorted(chunks, key=int) for f in chunks[key]["fooled_by"]]
    eps = read_finished(evaluation)["eps"]
    x, y = test_pixels(load_data(data_of(work / "adaptive-mix")), count=len(fooled_by))
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment_info(torch.device("cpu"))
    command = "python benchmarks/robust_square.py " + " ".join(sys.argv[1:])
    lines = [
        "# Adaptive mix: the images only Square fooled",
        "",
        f"Written by `{command.strip()}` on {time.strftime('%Y-%m-%d')}; machine: {env['machine']}, "
        f"torch {env['torch']}, {args.threads} thread(s). Alpha = sigmoid(gamma') is the weight "
        "of the robust base; Square re-run with AutoAttack's standard settings on those images.",
        "",
        "| data | attacked images | only Square fooled | alpha on clean images: mean [5%, 50%, 95%] "
        "| alpha after PGD-20, all | alpha, clean, Square-only images | Square re-run fools "
        "| alpha at those adversarial images | of those, standard base wrong | robust base wrong "
        "| Square seconds |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    found = {}
    for name in args.datasets:
        print(f"== {name}", flush=True)
        r = found[name] = diagnose(args.work / name)
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "robust_square.md").write_text("\n".join(lines) + "\n")
    body = {"environment": env, "command": command.strip(), "datasets": found}
    (RESULTS / "robust_square.json").write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {RESULTS / 'robust_square.md'}")


if __name__ == "__main__":
    main()
