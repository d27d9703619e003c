"""Tune every federated method on its own main knob, with the same budget, on validation only.

For each setting (data set x backbone) and algorithm this writes a sweep spec and runs
`trustvision sweep run` into `<runs>/<setting>/<algorithm>/` (seed 0, the setting's full
length): one trial per grid value, every method the same number of trials. Then a second
stage of two more trials for every method (`<algorithm>-stage2/`): beyond the grid's edge
where the best value sat at one, else halfway (geometrically) to each neighbour of the best;
the choice is the best validation score over both stages. A trial's score
is the validation accuracy of the round that validation picks: generic (class-balanced, on
the clients' held-out images) for a method with a global model, local (mean over clients)
for one without (FedPer, FedRep). The test numbers are recorded beside it and never read.
A killed invocation continues where it stopped (the sweeps resume). Then writes
docs/results/fed-sweep.{md,json} and the FedLoGe norm-target curve beside the authors'.
`benchmarks/fed_compare.py` trains the chosen configs over more seeds.

    .venv/bin/python benchmarks/fed_sweep.py --settings fmnist-cnn --algorithms fedloge fedavg
    .venv/bin/python benchmarks/fed_sweep.py --parallel 2     # two sweeps at once, a core each
    .venv/bin/python benchmarks/fed_sweep.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from common import FED_SETTINGS as SETTINGS
from common import ROOT, write_results

# Each method's own most important knob (the learning rate where it has none), 7 values each.
LR = [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2]
KNOBS: dict[str, tuple[str, list[float]]] = {
    "fedavg": ("optim.lr", LR),
    "fedprox": ("algorithm.options.mu", [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]),
    "fedper": ("optim.lr", LR),
    "fedrep": ("algorithm.options.head_epochs", [1, 2, 3, 4, 6, 8, 10]),
    "fedbabu": ("algorithm.options.finetune_epochs", [0, 1, 2, 3, 5, 8, 10]),
    "fedrod": ("optim.lr", LR),
    "fedetf": ("algorithm.options.temperature", [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]),
    "ditto": ("algorithm.options.lam", [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]),
    "fedlc": ("algorithm.options.tau", [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]),
    "fedloge": ("algorithm.options.norm_target", [0.05, 0.1, 0.2, 0.4, 1.0, 2.0, 4.0]),
}
NO_GENERIC = {"fedper", "fedrep"}
# The authors' norm sweep (log/norm*.log: CIFAR-100-LT IF 100, ResNet-34, 20 clients, final
# round global accuracy, %), as read in shared METHODS.md.
AUTHORS_NORM = {0.01: 34.6, 0.02: 41.2, 0.06: 41.8, 0.08: 42.4, 0.1: 42.8, 0.2: 41.2, 0.4: 40.1}
AUTHORS_NORM |= {1.0: 38.0, 2.0: 36.2}


def objective(algorithm: str) -> tuple[str, str]:
    """The summary.json paths of a trial's validation score and of its test number."""
    kind = "local" if algorithm in NO_GENERIC else "generic"
    return f"selected.{kind}.{kind}_val_acc", f"selected.{kind}.{kind}_acc"


def spec(setting: str, algorithm: str) -> dict[str, Any]:
    """The sweep spec of one (setting, algorithm)."""
    key, grid = KNOBS[algorithm]
    metric, test = objective(algorithm)
    choice = [] if algorithm == "fedloge" else [f"algorithm={algorithm}"]
    if choice and key.startswith("algorithm."):  # a knob of its own: a section, not a name
        choice = [f"algorithm.name={algorithm}", "algorithm.options={}"]
    return {
        "name": f"{setting}-{algorithm}",
        "command": "fed run",
        "config": SETTINGS[setting]["config"],  # relative: sweeps run from ROOT, any checkout
        "overrides": [*SETTINGS[setting]["overrides"], *choice, "seed=0", "device=cpu"],
        "params": {key: {"grid": grid}},
        "objective": {"metric": metric, "direction": "maximize"},
        "test_metric": test,
        "seed": 0,
    }


def second_stage(grid: list[float], best: float) -> list[float]:
    """Two more values: beyond the grid's edge where `best` sits at one (a step of the grid's
    ratio there), else the geometric midpoints between `best` and its neighbours. Fewer where
    whole numbers leave no new value (e.g. 1 epoch at the bottom of a grid of epochs)."""
    values = sorted(grid)
    i = values.index(best)
    if i == len(values) - 1 and values[-2] > 0:
        step = values[-1] / values[-2]
        new = [best * step, best * step**2]
    elif i == 0 and best > 0:
        step = values[1] / values[0]
        new = [best / step, best / step**2]
    else:
        neighbours = [values[max(i - 1, 0)], values[min(i + 1, len(values) - 1)]]
        new = [(n * best) ** 0.5 if n > 0 and best > 0 else (n + best) / 2 for n in neighbours]
    if all(isinstance(v, int) for v in values):  # counts: rounded, never below the grid's floor
        new = [round(v) for v in new if round(v) >= min(values[0], 1)]
    return [
        v
        for v in dict.fromkeys(float(f"{v:.4g}") if isinstance(v, float) else v for v in new)
        if v not in values
    ]


def stage_dir(runs: Path, setting: str, algorithm: str, stage: int) -> Path:
    """The sweep directory of a stage (1: the grid, 2: the refinement)."""
    return runs / setting / (algorithm if stage == 1 else f"{algorithm}-stage2")


def sweep(setting: str, algorithm: str, runs: Path) -> list[Path]:
    """Run (or continue, or just find) both stages of a method's sweep; their directories."""
    first = run_stage(setting, algorithm, runs, stage=1, grid=KNOBS[algorithm][1])
    chosen = json.loads((first / "sweep.json").read_text())["chosen"]
    if chosen is None:
        return [first]
    best = chosen["params"][KNOBS[algorithm][0]]
    grid = second_stage(KNOBS[algorithm][1], best)
    return [first, run_stage(setting, algorithm, runs, stage=2, grid=grid)] if grid else [first]


def run_stage(setting: str, algorithm: str, runs: Path, *, stage: int, grid: list[float]) -> Path:
    """One stage's sweep over `grid`; returns its directory."""
    out = stage_dir(runs, setting, algorithm, stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    tree = spec(setting, algorithm)
    tree["params"] = {KNOBS[algorithm][0]: {"grid": grid}}
    if stage == 2:
        tree["name"] += "-stage2"
    path = out.parent / f"{out.name}.yaml"  # beside the sweep: its directory is its own
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    print(f"[{time.strftime('%H:%M:%S')}] sweep {setting} {algorithm} stage {stage}", flush=True)
    # One torch thread per trial: at batch 8 a second thread only waits (fed_compare.py).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "trustvision", "sweep", "run", str(path), "--out", str(out)]
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed with exit code {result.returncode}")
    return out


def trial_numbers(out: Path, trial: dict[str, Any]) -> dict[str, Any]:
    """Final-round and validation-chosen numbers of one finished trial, from its run."""
    summary = json.loads((out / trial["run_dir"] / "summary.json").read_text())
    headline, selected = summary["headline"], summary.get("selected", {})
    row: dict[str, Any] = {"final": {}, "selected": {}}
    for key in ("generic_acc", "generic_val_acc", "local_acc", "local_val_acc", "universal_acc"):
        if key in headline:
            row["final"][key] = headline[key]
    for kind in ("generic", "local"):
        if kind in selected:
            pick = selected[kind]
            row["selected"][kind] = {
                "selected_by": pick["selected_by"],
                "round": pick["round"],
                "val": pick[f"{kind}_val_acc"],
                "test": pick[f"{kind}_acc"],
            }
    return row


def collect(runs: Path, setting: str, algorithm: str) -> dict[str, Any] | None:
    """A method's trials over both stages, each with its numbers, and the choice among them
    (the best validation score, by the sweep's own choice function)."""
    from trustvision.sweep.choose import choose_trial

    trials = []
    for stage in (1, 2):
        out = stage_dir(runs, setting, algorithm, stage)
        if not (out / "sweep.json").is_file():
            continue
        for trial in json.loads((out / "sweep.json").read_text())["trials"]:
            trial = {**trial, "stage": stage, "id": f"{stage}.{trial['number']}", "sweep": str(out)}
            if trial["state"] == "COMPLETE":
                trial["numbers"] = trial_numbers(out, trial)
            trials.append(trial)
    if not trials:
        return None
    scored = [(i, t["validation"]) for i, t in enumerate(trials) if t["state"] == "COMPLETE"]
    pick = choose_trial(scored, "maximize")
    chosen = None if pick is None else trials[pick]
    if chosen is not None:
        write_choice(runs / setting, algorithm, chosen)
    return {"trials": trials, "chosen": chosen, "selected_by": "validation"}


def write_choice(folder: Path, algorithm: str, chosen: dict[str, Any]) -> None:
    """`<algorithm>.chosen.yaml` (the chosen trial's config, to train again) and `.json` (its
    run), which benchmarks/fed_compare.py reads."""
    sweep = Path(chosen["sweep"])
    config = yaml.safe_load((sweep / chosen["run_dir"] / "config.yaml").read_text())
    config["runs_dir"] = "runs"
    header = f"# {algorithm}: trial {chosen['id']} (stage.trial) of {sweep}, chosen on validation\n"
    (folder / f"{algorithm}.chosen.yaml").write_text(
        header + yaml.safe_dump(config, sort_keys=False)
    )
    run = {
        "run_dir": str(sweep / chosen["run_dir"]),
        "params": chosen["params"],
        "id": chosen["id"],
    }
    (folder / f"{algorithm}.chosen.json").write_text(json.dumps(run, indent=2) + "\n")


def pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}"


def markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = intro_lines(meta)
    for setting, block in results.items():
        lines += ["", f"## {SETTINGS[setting]['title']}", ""]
        lines += choice_table(block)
        for algorithm, report in block.items():
            lines += trial_table(algorithm, report)
        if "plot" in meta.get("plots", {}).get(setting, {}):
            plot = Path(meta["plots"][setting]["plot"]).name
            lines += ["", f"![FedLoGe norm target, {setting}]({plot})"]
    return "\n".join(lines) + "\n"


def intro_lines(meta: dict[str, Any]) -> list[str]:
    """The title and how every method was tuned."""
    return [
        "# Federated methods tuned on validation, each on its own knob, with equal budgets",
        "",
        f"Written by `{meta['command']}` on {meta['date']}; machine: {meta['machine']}.",
        "",
        "Every method: 7 trials (one per grid value) and 2 more in a second stage (beyond the "
        "grid's edge where the best sat at one, else between the best and its neighbours), "
        "seed 0, the setting's config otherwise "
        "(60 rounds, 2 local epochs, evaluation every 5 rounds). Each client holds out 10% of "
        "its images (stratified) and never trains on them. A trial's score (**selected_by: "
        "validation**) is the validation accuracy of the round that validation picks: "
        "generic (class-balanced over all clients' held-out images, from per-class counts) "
        "for methods with a global model, local (mean over clients) for FedPer and FedRep. "
        "Test numbers are shown beside it and were never read by any choice. Accuracy in %.",
    ]


def choice_table(block: dict[str, Any]) -> list[str]:
    """One row per method of a setting: its knob, the values tried and the one chosen."""
    lines = [
        "| algorithm | knob | values tried | chosen | val (chosen) | generic test | local test "
        "| rounds (generic / local) | trials done |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for algorithm, report in block.items():
        key, _ = KNOBS[algorithm]
        chosen = report.get("chosen")
        done = sum(t["state"] == "COMPLETE" for t in report["trials"])
        tried = sorted({t["params"][key] for t in report["trials"] if key in t["params"]})
        if chosen is None:
            lines.append(f"| {algorithm} | `{key}` | {tried} | - | - | - | - | - | {done} |")
            continue
        sel = chosen["numbers"]["selected"]
        rounds = " / ".join(str(sel[k]["round"]) if k in sel else "-" for k in ("generic", "local"))
        lines.append(
            f"| {algorithm} | `{key}` | {tried} | {chosen['params'][key]} | "
            f"{pct(chosen['validation'])} | {pct(sel.get('generic', {}).get('test'))} | "
            f"{pct(sel.get('local', {}).get('test'))} | {rounds} | {done} |"
        )
    return lines


def trial_table(algorithm: str, report: dict[str, Any]) -> list[str]:
    """Every trial of one method, in the order of its knob's value."""
    key, _ = KNOBS[algorithm]
    lines = [
        "",
        f"### {algorithm}: every trial",
        "",
        "| " + key + " | generic val | generic test | local val | local test "
        "| final generic test | final local test | state |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in sorted(report["trials"], key=lambda t: t["params"].get(key, 0)):
        n = t.get("numbers", {"selected": {}, "final": {}})
        sel, fin = n["selected"], n["final"]
        mark = " **(chosen)**" if report.get("chosen") and t["id"] == report["chosen"]["id"] else ""
        lines.append(
            f"| {t['params'].get(key)}{mark} | {pct(sel.get('generic', {}).get('val'))} | "
            f"{pct(sel.get('generic', {}).get('test'))} | {pct(sel.get('local', {}).get('val'))} | "
            f"{pct(sel.get('local', {}).get('test'))} | {pct(fin.get('generic_acc'))} | "
            f"{pct(fin.get('local_acc'))} | {t['state']} |"
        )
    return lines


def norm_plot(results: dict[str, dict[str, Any]], out: Path) -> dict[str, dict[str, str]]:
    """FedLoGe's norm target against validation and test accuracy, per setting, beside the
    authors' sweep (another data set and backbone: its shape, not its level, compares)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, dict[str, str]] = {}
    for setting, block in results.items():
        report = block.get("fedloge")
        if report is None:
            continue
        key = KNOBS["fedloge"][0]
        done = sorted(
            (t for t in report["trials"] if t["state"] == "COMPLETE"),
            key=lambda t: t["params"][key],
        )
        if not done:
            continue
        fig, (ax, authors) = plt.subplots(1, 2, figsize=(11, 4))
        x = [t["params"][key] for t in done]
        for kind, style in (("generic", "-"), ("local", "--")):
            for part, marker in (("val", "o"), ("test", "s")):
                y = [
                    100 * t["numbers"]["selected"].get(kind, {}).get(part, float("nan"))
                    for t in done
                ]
                ax.plot(x, y, style, marker=marker, label=f"{kind} {part}")
        chosen = report.get("chosen")
        if chosen is not None:
            ax.axvline(chosen["params"][key], color="grey", linestyle=":", label="chosen (val)")
        ax.set(xscale="log", xlabel="SSE-C norm target", ylabel="top-1 % (round chosen on val)")
        ax.set_title(SETTINGS[setting]["title"], fontsize=9)
        ax.legend(fontsize=8)
        authors.plot(list(AUTHORS_NORM), list(AUTHORS_NORM.values()), "k-o")
        authors.set(xscale="log", xlabel="SSE-C norm target", ylabel="global top-1 % (final round)")
        authors.set_title("authors' logs: CIFAR-100-LT, ResNet-34", fontsize=9)
        fig.tight_layout()
        path = out / f"fed_sweep_{setting}_fedloge_norm.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made[setting] = {"plot": str(path)}
    return made


def main() -> None:
    from trustvision.runs import machine_summary

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--algorithms", nargs="+", default=list(KNOBS), choices=list(KNOBS))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/fed-sweep")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results")
    parser.add_argument("--parallel", type=int, default=1, help="sweeps at once, a core each")
    parser.add_argument("--report-only", action="store_true", help="report finished sweeps")
    args = parser.parse_args()
    jobs = [(s, a) for s in args.settings for a in args.algorithms]
    if not args.report_only:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(lambda job: sweep(*job, args.runs), jobs))
    results: dict[str, dict[str, Any]] = {}
    for setting, algorithm in jobs:
        report = collect(args.runs, setting, algorithm)
        if report is not None:
            results.setdefault(setting, {})[algorithm] = report
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/fed_sweep.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_summary(),
        "knobs": {a: {"key": k, "grid": g} for a, (k, g) in KNOBS.items()},
        "selected_by": "validation",
    }
    meta["plots"] = norm_plot(results, args.out)
    body = {"meta": meta, "results": results}
    print(f"wrote {write_results('fed-sweep', markdown(results, meta), body, out=args.out)}")


if __name__ == "__main__":
    main()
