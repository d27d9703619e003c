"""Lightweight CNNs against the paper: accuracy per ablation row, int8, size and latency.

For every data set and seed, trains the rows of configs/compact/<data set>.yaml (plain
baseline, dual without progressive unfreezing, the full method) into
`<runs>/<data set>/seed<k>/`, exports the deployed model to ONNX fp32 and int8 and checks
both on the test set; then times the first seed's model (PyTorch eager vs onnxruntime fp32
and int8, 1 and 2 threads). A finished seed is skipped and an interrupted one resumes from
its last checkpoint, so running the command again continues where it stopped. Writes
docs/results/compact.{md,json} and compact_accuracy_vs_params.png.

    .venv/bin/python benchmarks/compact.py                       # everything (see docs/compact.md)
    .venv/bin/python benchmarks/compact.py --datasets mnist --seeds 0 --epochs-scale 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from common import CIFAR_ZIP, mean_std, run_script, write_results
from compact_report import markdown, plot, pm
from processes import process_pool

ROOT = Path(__file__).parents[1]
CONFIGS = {
    "mnist": ROOT / "configs/compact/mnist.yaml",
    "fashion-mnist": ROOT / "configs/compact/fashion_mnist.yaml",
    "cifar10": ROOT / "configs/compact/cifar10.yaml",
}
# The paper's claims (Isong 2025, abstract) and the goals we set ourselves.
PAPER = {
    "mnist": {"top1": 99.0, "params": "14,862", "goal": 99.4},
    "fashion-mnist": {"top1": 89.0, "params": "14,862", "goal": 91.0},
    "cifar10": {"top1": 65.0, "params": "< 20,000", "goal": 70.0},
}


def overrides(dataset: str, seed: int, scale: float, base: dict[str, Any]) -> list[str]:
    """Config overrides of one seed: the seed, scaled epochs, the CIFAR-10 zip.

    The unfreezing schedule scales with the epochs, so a group still joins at the same
    fraction of stage 2.
    """
    dual = max(1, round(base["dual"]["epochs"] * scale))
    finetune = max(1, round(base["finetune"]["epochs"] * scale))
    per_group = max(1, round(base["finetune"].get("epochs_per_group", 1) * scale))
    extra = [
        f"seed={seed}",
        f"dual.epochs={dual}",
        f"finetune.epochs={finetune}",
        f"finetune.epochs_per_group={per_group}",
    ]
    if dataset == "cifar10":
        extra.append(f"data.source={CIFAR_ZIP}")
    return extra


class LineReporter:
    """One log line per epoch, prefixed with the data set and seed (the log of a long run)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def start(self, title: str, total: int) -> None:
        pass

    def advance(self) -> None:
        pass

    def finish(self, record: dict[str, Any]) -> None:
        from trustvision.report.console import format_record

        print(f"{self.prefix}: {format_record(record)}", flush=True)


def train_run(dataset: str, extra: list[str], path: Path, label: str) -> Any:
    """Train (or finish) configs/compact/<dataset>.yaml with `extra` overrides into `path`.

    One torch thread; a finished run is left as it is. Returns the run's RunDir.
    """
    import torch

    from trustvision.compact.config import CompactConfig
    from trustvision.compact.train import train_compact
    from trustvision.config import load_config
    from trustvision.runs import RunDir

    torch.set_num_threads(1)
    run = RunDir(path)
    if not run.finished:
        cfg = load_config(CompactConfig, CONFIGS[dataset], extra)
        started = time.perf_counter()
        train_compact(cfg, run_dir=path, reporter=LineReporter(label))
        print(f"{label}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    return run


def run_seed(dataset: str, seed: int, scale: float, runs: str) -> dict[str, Any]:
    """Train (or finish) one seed and export it; returns the numbers of its summary."""
    from trustvision.compact.deploy import EXPORT_DIR, EXPORT_JSON, export_run
    from trustvision.config import read_yaml

    extra = overrides(dataset, seed, scale, read_yaml(CONFIGS[dataset]))
    path = Path(runs) / dataset / (f"seed{seed}" if scale == 1 else f"seed{seed}-x{scale:g}")
    run = train_run(dataset, extra, path, f"{dataset} seed {seed}")
    export_json = path / EXPORT_DIR / EXPORT_JSON
    record = json.loads(export_json.read_text()) if export_json.is_file() else export_run(run)
    return {
        "dataset": dataset,
        "seed": seed,
        "path": str(path),
        "summary": run.read_summary(),
        "export": record,
    }


def run_variant(path: str, mode: str) -> float:
    """Test top-1 of the full row re-trained from a finished stage 1 with unification `mode`."""
    import torch

    from trustvision.compact.train import unify_variant
    from trustvision.runs import RunDir

    torch.set_num_threads(1)
    return unify_variant(RunDir(path), mode=mode)["test"]["top1"]


def bench_seed(path: str) -> dict[str, Any]:
    """Latency of one finished run (kept in its bench.json)."""
    from trustvision.compact.deploy import BENCH_JSON, bench_run
    from trustvision.runs import RunDir

    done = Path(path) / BENCH_JSON
    return json.loads(done.read_text()) if done.is_file() else bench_run(RunDir(path))


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per data set: every row's accuracy (mean, std over seeds), stage 1, int8, cost."""
    from trustvision.config import read_yaml

    table: dict[str, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        runs = [r for r in results if r["dataset"] == dataset]
        summaries = [r["summary"] for r in runs]
        first = summaries[0]
        rows = {
            name: {
                "top1": mean_std([100 * s["rows"][name]["top1"] for s in summaries]),
                "epochs": first["rows"][name]["epochs"],
                "image_passes": first["rows"][name]["image_passes"],
                "wall_seconds": mean_std([s["rows"][name]["wall_seconds"] for s in summaries]),
            }
            for name in first["rows"]
        }
        branches = {
            name: mean_std([100 * s["dual"]["branches"][name] for s in summaries])
            for name in (first["dual"] or {}).get("branches", {})
        }
        exports = [r["export"] for r in runs]
        config = read_yaml(Path(runs[0]["path"]) / "config.yaml")
        table[dataset] = {
            "seeds": [r["seed"] for r in runs],
            "runs": [r["path"] for r in runs],
            "source": first["data"]["source"],
            "variant": first["data"]["variant"],
            "model": first["model"],
            "parameters": first["parameters"],
            "budget": first["budget"],
            "macs": first["macs"],
            "unify": first["unify"],
            "augment_prob": {
                "plain": config["augment_prob"],
                "stage2": config["finetune"]["augment_prob"],
            },
            "dual_epochs": (first["dual"] or {}).get("epochs"),
            "rows": rows,
            "stage1": branches,
            "int8": {
                "onnx_fp32_top1": mean_std([100 * e["top1"]["onnx_fp32"] for e in exports]),
                "onnx_int8_top1": mean_std([100 * e["top1"]["onnx_int8"] for e in exports]),
                "drop_points": mean_std([e["int8_drop_points"] for e in exports]),
                "max_abs_diff": max(e["fp32_parity"]["max_abs_diff"] for e in exports),
                "min_agreement": min(e["fp32_parity"]["agreement"] for e in exports),
                "all_checks_passed": all(e["passed"] for e in exports),
            },
            "bytes": exports[0]["bytes"],
            "paper": PAPER[dataset],
        }
    return table


def add_variants(
    table: dict[str, Any],
    results: list[dict[str, Any]],
    pairs: list[tuple[str, str]],
    scores: list[float],
) -> None:
    """Per data set and unification mode: the full row's top-1 (mean, std over seeds)."""
    dataset_of = {r["path"]: r["dataset"] for r in results}
    for dataset, t in table.items():
        modes = dict.fromkeys(m for (p, m) in pairs if dataset_of[p] == dataset)
        t["unify_variants"] = {
            mode: mean_std(
                [
                    100 * s
                    for (p, m), s in zip(pairs, scores, strict=True)
                    if m == mode and dataset_of[p] == dataset
                ]
            )
            for mode in modes
        }


def main() -> None:
    from trustvision.runs import machine_summary

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--epochs-scale", type=float, default=1.0, help="multiply both stages' epochs"
    )
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (1 thread each)")
    parser.add_argument("--runs", default=str(ROOT / "runs/compact-bench"))
    parser.add_argument("--out", default=str(ROOT / "docs/results"))
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument(
        "--unify-variants",
        nargs="*",
        default=[],
        choices=["augmented", "original", "average"],
        help="also re-train the full row from each seed's stage 1 with these unification modes",
    )
    args = parser.parse_args()
    jobs = [(d, s, args.epochs_scale, args.runs) for d in args.datasets for s in args.seeds]
    started = time.perf_counter()
    with process_pool(args.jobs) as pool:
        results = list(pool.map(run_seed, *zip(*jobs, strict=True)))
        pairs = [(r["path"], m) for m in args.unify_variants for r in results]
        scores = list(pool.map(run_variant, *zip(*pairs, strict=True))) if pairs else []
    table = aggregate(results)
    add_variants(table, results, pairs, scores)
    latency = {}
    if not args.no_latency:
        for dataset in table:
            latency[dataset] = bench_seed(table[dataset]["runs"][0])
    meta = {
        "machine": machine_summary(),
        "date": time.strftime("%Y-%m-%d"),
        "seeds": args.seeds,
        "epochs_scale": args.epochs_scale,
        "jobs": args.jobs,
        "wall_seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    body = {"meta": meta, "datasets": table, "latency": latency}
    write_results("compact", markdown(table, latency, meta), body, out=out)
    plot(table, out / "compact_accuracy_vs_params.png")
    print(f"wrote {out / 'compact.md'} in {meta['wall_seconds']:.0f} s")
    print(
        math.nan
        if not table
        else "\n".join(
            f"{d}: {pm(t['rows'].get('full', next(iter(t['rows'].values())))['top1'])}"
            for d, t in table.items()
        )
    )


if __name__ == "__main__":
    run_script(main)
