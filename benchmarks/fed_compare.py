"""Federated algorithms side by side on the CPU-scale long-tailed settings, over seeds.

Trains every (setting, algorithm, seed) with `trustvision fed run` into
`<runs>/<setting>/<algorithm>/seed<k>/`; a finished run is read back, an interrupted one is
resumed from its last checkpoint, so running the command again continues where it stopped.
Where benchmarks/fed_sweep.py tuned the method (`<sweeps>/<setting>/<algorithm>.chosen.yaml`),
the run trains that validation-chosen config, and seed 0 is the sweep's chosen trial itself;
otherwise the setting's config with the method's defaults (said in the report). Then writes
docs/results/federated.{md,json}: generic and local accuracy (mean +- std over seeds) at the
final round and at the round validation picks, the validation accuracies, FedLoGe's
universal SSE-C accuracy, head/middle/tail, seconds per round, the authors' numbers beside
them, and two plots per setting (accuracy per round, per-class accuracy against training
frequency). No number is chosen by test accuracy.

    .venv/bin/python benchmarks/fed_compare.py                          # everything (hours)
    .venv/bin/python benchmarks/fed_compare.py --settings fmnist --seeds 0 \\
        --algorithms fedavg fedloge
    .venv/bin/python benchmarks/fed_compare.py --jobs 4     # four runs at once (four cores)
    .venv/bin/python benchmarks/fed_compare.py --report-only  # rewrite the docs, train nothing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from common import CIFAR_ZIP, ROOT, mean_std, write_results

from trustvision.runs import RunDir

SETTINGS: dict[str, dict[str, Any]] = {
    "fmnist-cnn": {
        "config": ROOT / "configs/fed/fmnist_lt_cpu.yaml",
        "title": "Fashion-MNIST-LT (IF 100, alpha 0.5), mnist_cnn",
        "overrides": [],
        "seeds": [0, 1, 2],
    },
    "fmnist-gap": {
        "config": ROOT / "configs/fed/fmnist_lt_cpu.yaml",
        "title": "Fashion-MNIST-LT (IF 100, alpha 0.5), gap_cnn (conv-BN-ReLU stages, GAP)",
        "overrides": ["model.name=gap_cnn", "model.kwargs={}"],
        "seeds": [0, 1, 2],
    },
    "cifar10": {
        "config": ROOT / "configs/fed/cifar10_lt_cpu.yaml",
        "title": "CIFAR-10-LT (IF 100, alpha 0.5)",
        "overrides": [f"data.source={CIFAR_ZIP}"],
        "seeds": [0],
    },
}
ALGORITHMS = [
    "fedavg",
    "fedprox",
    "fedper",
    "fedrep",
    "fedbabu",
    "fedrod",
    "fedetf",
    "ditto",
    "fedlc",
    "fedloge",
]
COLUMNS = [
    ("generic_acc", "generic"),
    ("selected_generic", "generic @ val round"),
    ("generic_val_acc", "generic val"),
    ("universal_acc", "universal (SSE-C)"),
    ("local_acc_masked", "local (masked)"),
    ("selected_local", "local @ val round"),
    ("local_val_acc", "local val"),
    ("local_acc_unmasked", "local (unmasked)"),
    ("generic_head", "head"),
    ("generic_middle", "middle"),
    ("generic_tail", "tail"),
]
# The authors' run logs, CIFAR-10-LT a=0.5 IF=100, ResNet-18, 500 rounds (METHODS.md, sec. 1).
AUTHORS = {
    "fedavg": (72.1, 86.6),
    "fedprox": (71.9, 86.3),
    "ditto": (71.8, 89.2),
    "fedetf": (68.9, 71.7),
    "fedloge": (73.1, 89.4),
}


def trustvision() -> list[str]:
    """The `trustvision` console script of this interpreter's environment, or `python -m`."""
    script = Path(sys.executable).parent / "trustvision"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trustvision"]


def finished_run(directory: Path) -> Path | None:
    """The finished run under `directory`, if any."""
    return next(
        (p.parent for p in sorted(directory.glob("*/config.yaml")) if RunDir(p.parent).finished),
        None,
    )


def chosen_config(sweeps: Path, setting: str, algorithm: str) -> tuple[Path, Path] | None:
    """The config benchmarks/fed_sweep.py chose on validation and its chosen trial's run."""
    config = sweeps / setting / f"{algorithm}.chosen.yaml"
    if not config.is_file():
        return None
    choice = json.loads(config.with_suffix(".json").read_text())
    return config, Path(choice["run_dir"])


def find(setting: str, algorithm: str, seed: int, runs: Path, sweeps: Path) -> Path | None:
    """The finished run of a job, if there is one (training nothing)."""
    chosen = chosen_config(sweeps, setting, algorithm)
    if chosen is not None and seed == 0:
        return chosen[1]
    return finished_run(runs / setting / algorithm / f"seed{seed}")


def train(
    setting: str, algorithm: str, seed: int, runs: Path, extra: list[str], sweeps: Path
) -> Path:
    """Train (or resume, or just find) one run; returns its directory."""
    chosen = chosen_config(sweeps, setting, algorithm)
    if chosen is not None and seed == 0 and not extra:
        return chosen[1]  # the sweep's chosen trial is this very run: seed 0, same config
    directory = runs / setting / algorithm / f"seed{seed}"
    done = finished_run(directory)
    if done is not None:
        return done
    started = sorted(p.parent for p in directory.glob("*/config.yaml"))
    checkpoints = started[-1] / "checkpoints" if started else None
    if checkpoints is not None and checkpoints.is_dir() and any(checkpoints.iterdir()):
        command = [*trustvision(), "fed", "run", "--resume", str(started[-1])]
    else:
        spec = SETTINGS[setting]
        choice = [] if algorithm == "fedloge" else [f"algorithm={algorithm}"]
        config = [str(chosen[0])] if chosen else [str(spec["config"]), *spec["overrides"], *choice]
        command = [
            *trustvision(),
            "fed",
            "run",
            *config,
            f"seed={seed}",
            f"runs_dir={directory}",
            *extra,
        ]
    print(f"[{time.strftime('%H:%M:%S')}] {setting} {algorithm} seed {seed}", flush=True)
    # One torch thread: at batch 8 a second thread only waits, and with another job on the
    # machine its spinning slowed rounds twenty-fold here (5 s -> 90-150 s).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if subprocess.run(command, stdout=subprocess.DEVNULL, env=env).returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed (its error is above)")
    done = finished_run(directory)
    if done is None:
        raise SystemExit(f"{directory}: `{' '.join(command)}` ended without a finished run")
    return done


def numbers(run: Path) -> dict[str, Any]:
    """The headline numbers, per-class accuracy and timing of one finished run."""
    summary = json.loads((run / "summary.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_seconds = [
        r["round_seconds"] - r.get("eval_seconds", 0.0) for r in history if "round_seconds" in r
    ]
    headline, selected = summary["headline"], summary.get("selected", {})
    return {
        **{key: headline.get(key, math.nan) for key, _ in COLUMNS},
        "selected_generic": selected.get("generic", {}).get("generic_acc", math.nan),
        "selected_local": selected.get("local", {}).get("local_acc", math.nan),
        "selected_rounds": {kind: pick["round"] for kind, pick in selected.items()},
        "lr": yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"],
        "options": summary["options"],
        "seconds_per_round": statistics.median(train_seconds),
        # absent for methods without a generic model (FedPer)
        "generic_per_class": summary["final"]["generic"].get("generic", {}).get("per_class"),
        "history": [
            {k: r[k] for k in ("round", "generic_acc", "local_acc_masked") if k in r}
            for r in history
        ],
        "train_counts": summary["data"]["train_counts"],
        "rounds": summary["rounds"],
        "run": str(run),
        "machine": where(summary["environment"]),
    }


def where(environment: dict[str, Any]) -> str:
    """The machine and device a run trained on, as its summary recorded them."""
    device = environment.get("gpu") or environment["device"]
    return f"{environment['machine']}; {device}; torch {environment['torch']}"


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in COLUMNS] + ["seconds_per_round"]
    stats: dict[str, Any] = {key: mean_std([row[key] for row in per_seed]) for key in keys}
    stats["machines"] = sorted({row["machine"] for row in per_seed})
    first = per_seed[0]
    stats["config"] = {"optim.lr": first["lr"], "options": first["options"]}
    # Every number: the config chosen on validation (or the defaults, untuned), and the
    # columns "@ val round" at the round validation picked; nothing is chosen on test.
    stats["selected_by"] = "validation" if all(r["tuned"] for r in per_seed) else "defaults"
    return stats


def cell(stat: dict[str, float], *, scale: float = 100.0, digits: int = 1) -> str:
    if stat["n"] == 0:
        return "-"
    text = f"{scale * stat['mean']:.{digits}f}"
    return text + (f" ± {scale * stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# Federated long-tailed learning: FedLoGe and its baselines",
        "",
        f"Written by `{meta['command']}` on {meta['date']}; machine: {meta['machine']}. "
        f"This invocation took {meta['wall_seconds'] / 60:.0f} min (finished runs are reused).",
        "",
        "Accuracy in %, mean ± std over seeds, on test images. **selected_by: validation**: "
        "each method's config is the one benchmarks/fed_sweep.py chose on the clients' "
        "held-out images (docs/results/fed-sweep.md; `tuned` says so, `defaults` marks a "
        "method not swept yet), and the `@ val round` columns give the test accuracy of the "
        "round whose validation accuracy was highest (generic and local chosen apart); the "
        "other columns are the final round's. No number is chosen on test. `generic val` / "
        "`local val`: the final round's validation accuracy (class-balanced over all clients' "
        "held-out images / mean over clients). Generic: the global model on the "
        "balanced test set (FedLoGe: psi_hat; `universal` is its SSE-C). Local: unweighted mean "
        "over clients of their local test sets, personalised where the method personalises; "
        "masked = classes a client never trained on get -inf logits, for every method alike. "
        "Head/middle/tail: generic per-class accuracy grouped by cumulative training frequency "
        "(75% / 95%). s/round: median training seconds of a round (all sampled clients, one "
        "process, one torch thread (the first runs had two), evaluation excluded; other jobs "
        "may have shared the machine, so compare engines with results/federated-engines.md, "
        "not with this column).",
    ]
    for setting, block in results.items():
        spec = SETTINGS[setting]
        lines += [
            "",
            f"## {spec['title']}",
            "",
            f"Config `{Path(spec['config']).relative_to(ROOT)}`; seeds {block['seeds']}. "
            + trained_on(block["algorithms"]),
            "",
            "| algorithm | config | seeds | "
            + " | ".join(label for _, label in COLUMNS)
            + " | s/round |",
            "|---" * (len(COLUMNS) + 4) + "|",
        ]
        for algorithm, row in block["algorithms"].items():
            cells = [cell(row[key]) for key, _ in COLUMNS]
            seconds = cell(row["seconds_per_round"], scale=1.0, digits=1)
            seeds = row["generic_acc"]["n"] or row["local_acc_masked"]["n"]
            tuned = "tuned" if row["selected_by"] == "validation" else "defaults"
            lines.append(
                f"| {algorithm} | {tuned} | {seeds} | " + " | ".join(cells) + f" | {seconds} |"
            )
        lines += ["", *verdict(block["algorithms"])]
        lines += ["", "Plots: the first seed's run of each method (per class: FedAvg and FedLoGe)."]
        for plot in block["plots"]:
            lines += ["", f"![{Path(plot).stem}]({Path(plot).name})"]
    if meta["missing"]:
        lines += ["", "## Not run yet", ""]
        for setting in dict.fromkeys(setting for setting, _, _ in meta["missing"]):
            runs = [f"{a} seed {s}" for name, a, s in meta["missing"] if name == setting]
            lines.append(f"- {SETTINGS[setting]['title']}: {', '.join(runs)}")
    lines += [
        "",
        "## The authors' numbers",
        "",
        "CIFAR-10-LT, alpha 0.5, IF 100, ResNet-18, 40 clients, batch 8, 5 local epochs, "
        "500 rounds, best round of their logs on the test set (generic / local, %). Our "
        "settings differ: 2 local epochs and 60 rounds, small CNNs (Fashion-MNIST) or ResNet-8 "
        "(CIFAR-10) instead of ResNet-18, and the final or validation-chosen round instead of "
        "the best on test.",
        "",
        "| algorithm | generic | local |",
        "|---|---:|---:|",
        *(f"| {a} | {g} | {loc} |" for a, (g, loc) in AUTHORS.items()),
    ]
    return "\n".join(lines) + "\n"


def trained_on(rows: dict[str, Any]) -> str:
    """Which machine trained which methods (the s/round column depends on it)."""
    machines = sorted({m for row in rows.values() for m in row["machines"]})
    parts = [
        f"{m} ({', '.join(a for a, row in rows.items() if m in row['machines'])})" for m in machines
    ]
    return "Trained on: " + "; ".join(parts) + "."


def verdict(rows: dict[str, Any]) -> list[str]:
    """Does FedLoGe beat FedAvg (generic) and FedAvg/FedPer/FedRep (local) beyond the spread?"""
    if "fedloge" not in rows:
        return []
    ours = rows["fedloge"]
    out = []
    for key, rivals in (
        ("generic_acc", ["fedavg"]),
        ("selected_generic", ["fedavg"]),
        ("local_acc_masked", ["fedavg", "fedper", "fedrep"]),
        ("selected_local", ["fedavg", "fedper", "fedrep"]),
    ):
        for rival in (r for r in rivals if r in rows):
            gap = ours[key]["mean"] - rows[rival][key]["mean"]
            spread = max(ours[key]["std"], rows[rival][key]["std"])
            beats = gap > spread if ours[key]["n"] > 1 else gap > 0
            word = "beats" if beats else "does not beat"
            what = dict(COLUMNS)[key]
            out.append(
                f"- FedLoGe {word} {rival} on {what}: "
                f"{100 * gap:+.1f} points (largest seed std {100 * spread:.1f})."
            )
    if "fedavg" in rows:
        out += ["", *goal(ours, rows["fedavg"])]
    return out


def goal(ours: dict[str, Any], fedavg: dict[str, Any]) -> list[str]:
    """The issue's bar: generic above FedAvg's by more than the larger seed std, and local
    accuracy not below FedAvg's; at the final round and at the validation-chosen round."""
    lines = []
    for generic, local, when in (
        ("generic_acc", "local_acc_masked", "final round"),
        ("selected_generic", "selected_local", "validation-chosen round"),
    ):
        gap = ours[generic]["mean"] - fedavg[generic]["mean"]
        spread = max(ours[generic]["std"], fedavg[generic]["std"])
        local_gap = ours[local]["mean"] - fedavg[local]["mean"]
        met = gap > spread and local_gap >= 0
        lines.append(
            f"- Goal at the {when}: {'met' if met else 'not met'} (generic {100 * gap:+.1f} vs "
            f"std {100 * spread:.1f}; local {100 * local_gap:+.1f})."
        )
    return lines


def plots(setting: str, block: dict[str, list[dict[str, Any]]], out: Path) -> list[str]:
    """Accuracy per round (seed 0 of every method) and per-class accuracy vs frequency."""
    from trustvision.federated.plots import plot_class_frequency, plot_methods_per_round

    rounds_png = plot_methods_per_round(
        {algorithm: seeds[0]["history"] for algorithm, seeds in block.items()},
        out / f"federated_{setting}_rounds.png",
    )
    first = next(iter(block.values()))[0]
    has_generic = [a for a in block if block[a][0]["generic_per_class"] is not None]
    chosen = [a for a in ("fedavg", "fedloge") if a in has_generic] or has_generic[:2]
    per_class = plot_class_frequency(
        {a: block[a][0]["generic_per_class"] for a in chosen},
        counts=first["train_counts"],
        classes=[str(c) for c in range(len(first["train_counts"]))],
        path=out / f"federated_{setting}_per_class.png",
    )
    return [str(rounds_png), str(per_class)]


def main() -> None:
    from trustvision.runs import machine_summary

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS)
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 3 (Fashion), 1 (CIFAR)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/fed-compare")
    parser.add_argument(
        "--sweeps",
        type=Path,
        default=ROOT / "runs/fed-sweep",
        help="benchmarks/fed_sweep.py's directory: the validation-chosen configs",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs trained at once (one process and thread each)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the finished runs and list the missing ones",
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args()
    started = time.perf_counter()
    jobs = [
        (setting, a, s)
        for setting in args.settings
        for a in args.algorithms
        for s in args.seeds or SETTINGS[setting]["seeds"]
    ]
    if args.report_only:
        found = {job: find(*job, args.runs, args.sweeps) for job in jobs}
        runs = {job: run for job, run in found.items() if run is not None}
    else:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {
                job: pool.submit(train, *job, args.runs, args.overrides, args.sweeps)
                for job in jobs
            }
            runs = {job: future.result() for job, future in futures.items()}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (setting, a, _), run in runs.items():
        row = numbers(run)
        row["tuned"] = chosen_config(args.sweeps, setting, a) is not None
        raw.setdefault(setting, {}).setdefault(a, []).append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        setting: {
            "seeds": args.seeds or SETTINGS[setting]["seeds"],
            "algorithms": {a: summarise(rows) for a, rows in block.items()},
            "plots": plots(setting, block, args.out),
        }
        for setting, block in raw.items()
    }
    meta = {
        "command": "python benchmarks/fed_compare.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_summary(),
        "wall_seconds": time.perf_counter() - started,
        "missing": [job for job in jobs if job not in runs],
    }
    body = {"meta": meta, "results": results, "runs": raw}
    print(write_results("federated", markdown(results, meta), body, out=args.out).read_text())


if __name__ == "__main__":
    main()
