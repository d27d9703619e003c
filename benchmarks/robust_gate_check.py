"""The gate check: which training recipe lets the mixing network tell clean from attacked
validation images, at this CPU's training budget.

A candidate is a set of `mixnet` settings (`--candidate KEY=VALUE ...`). The first question
was the training attacks' loss weight: each of the authors' attacks maximises
(1 - w) L + w BCE(gamma', 1) with w ~ U(0, `mixnet.bce_weight_max`) (their 0.4), so it also
learns to fool the gate; with a few hundred optimiser steps that left the Fashion-MNIST gate
unable to tell clean from attacked images (docs/robust.md). The second is the length the CPU
cut (`epochs`, `train_subset`). For each candidate this trains the mixing network of
configs/robust/bench_<data>.yaml with those settings on the benchmark's finished bases (its
config otherwise, the configured gate: no gate sweep) into
<work>/<data>/gate-check/<settings>/, and reads after the last epoch, in evaluation mode on
the monitor's validation images (`mixnet.monitor_images`; never a test image), the mean alpha
on the clean images, under PGD on the mix's loss (not aimed at the gate, though its gradient
runs through it, as AutoAttack's attacks do) and under PGD that also pushes the gate down.
The choice: the largest separation, attacked minus clean, if it is above zero (else none: no
candidate's gate weighs the robust base more under attack). A candidate's settings apply to the config as it is now, and a candidate
begun with another config is retired and trained again: once the config holds a chosen recipe,
name the other candidates by every setting in which they differ from it. One on bases the
pipeline has since retrained was retired by it. Once the config holds the chosen
settings, `--adopt` copies the chosen network's run to <work>/<data>/adaptive-mix (when there
is none and no pipeline is working there): the pipeline then keeps that network and only
chooses its gate (robust/commands/demo.py). One process trains a candidate at a time, so
checks of different candidates can run side by side (one per core); the report keeps the rows
of candidates checked earlier, whose runs may be gone.

    .venv/bin/python benchmarks/robust_gate_check.py --datasets cifar10 \\
        --candidate bce_weight_max=0 --candidate bce_weight_max=0.4
    .venv/bin/python benchmarks/robust_gate_check.py --datasets fashion-mnist \\
        --candidate bce_weight_max=0 --candidate bce_weight_max=0 epochs=5 train_subset=null
    .venv/bin/python benchmarks/robust_gate_check.py --report-only   # rewrite the report only
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, read_results, run_script, write_results
from rich.console import Console
from robust import CONFIGS

from trustvision.config import apply_overrides, build_config, load_config
from trustvision.errors import ConfigError
from trustvision.report.console import ConsoleReporter
from trustvision.robust.commands.adaptive import GATE_CHOICE_KEYS
from trustvision.robust.commands.demo import mix_config, retire
from trustvision.robust.commands.mix import run_mix
from trustvision.robust.config import MixConfig, PipelineConfig
from trustvision.robust.mixnet_settings import MixNetSettings
from trustvision.robust.runs import is_finished, read_finished
from trustvision.runs import LOCK_FILE, RunDir, held_alone, held_in_turn, machine_summary

KINDS = ("clean", "attacked", "adaptive")
YES_NO = {True: "yes", False: "no"}  # None: an earlier row that recorded no full settings
DEFAULT_CANDIDATES = [["bce_weight_max=0"], ["bce_weight_max=0.4"]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=list(CONFIGS), default=["cifar10"])
    parser.add_argument(
        "--candidate",
        dest="candidates",
        action="append",
        nargs="+",
        metavar="KEY=VALUE",
        help="one candidate's `mixnet` settings; repeat for each candidate (default: "
        "bce_weight_max=0, then the authors' bce_weight_max=0.4)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / "runs/robust-bench",
        help="benchmarks/robust.py's work directory, whose <data>/standard and robust bases "
        "must be trained",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--adopt",
        action="store_true",
        help="hand the chosen network to the pipeline (<work>/<data>/adaptive-mix), once the "
        "config holds the chosen settings",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite the report from docs/results/robust-gate-check.json",
    )
    args = parser.parse_args(argv)
    if args.report_only and args.adopt:
        parser.error("--adopt hands over a network a check trained: not with --report-only")
    args.candidates = args.candidates or DEFAULT_CANDIDATES
    return args


def label(candidate: list[str]) -> str:
    """A candidate's settings as one name, also its run directory's."""
    return "+".join(candidate)


def candidate_mixnet(cfg: PipelineConfig, candidate: list[str]) -> MixNetSettings:
    """The pipeline's mixing network with the candidate's settings and no gate sweep."""
    tree = apply_overrides(cfg.mixnet.model_dump(mode="json"), [*candidate, "bias_sweep=[]"])
    return build_config(MixNetSettings, tree, origin=f"candidate `{' '.join(candidate)}`")


def candidate_config(cfg: PipelineConfig, work: Path, candidate: list[str]) -> MixConfig:
    """The pipeline's adaptive mix with the candidate's settings and no gate sweep: it differs
    from the pipeline's own only in what is chosen after training (and in those settings)."""
    mixnet = candidate_mixnet(cfg, candidate)
    return mix_config(cfg, work, "adaptive").model_copy(update={"mixnet": mixnet})


def holds(cfg: PipelineConfig, mixnet: MixNetSettings) -> bool:
    """Whether the config's mixing network is `mixnet` but for the gate's choice."""
    gate = {key: getattr(cfg.mixnet, key) for key in GATE_CHOICE_KEYS}
    return mixnet.model_copy(update=gate) == cfg.mixnet


def recorded_configured(cfg: PipelineConfig, mixnet: dict[str, Any] | None) -> bool | None:
    """Whether recorded `mixnet` settings are the config's but for the gate's choice."""
    if mixnet is None:
        return None
    recorded = MixNetSettings.recorded(mixnet)
    return recorded is not None and holds(cfg, recorded)


def configured(cfg: PipelineConfig, candidate: list[str]) -> bool:
    """Whether the config's mixing network is the candidate's but for the gate's choice."""
    return holds(cfg, candidate_mixnet(cfg, candidate))


def check(
    name: str, cfg: PipelineConfig, work: Path, candidates: list[list[str]]
) -> list[dict[str, Any]]:
    """Train (or find) every candidate's network on the bases in `work`; their rows. Each
    candidate is held by one process, so checks of different candidates can run side by side."""
    missing = [b for b in ("standard", "robust") if not is_finished(work / b)]
    if missing:
        raise SystemExit(
            f"{name}: the bases {missing} are not trained in {work}: run "
            f"`benchmarks/robust.py --datasets {name} --no-adaptive` first"
        )
    rows = []
    for candidate in candidates:
        try:
            rows.append(check_one(name, cfg, work, candidate))
        except ConfigError as err:  # another process holds it: the others are still checked
            print(f"skipped {label(candidate)}: {err}", flush=True)
    return rows


def check_one(name: str, cfg: PipelineConfig, work: Path, candidate: list[str]) -> dict[str, Any]:
    """Train (or find) one candidate's network, held by this process; its row."""
    path = work / "gate-check" / label(candidate)
    refusal = f"another gate check is training {label(candidate)} in {work}"
    with held_alone(work / "gate-check" / "held" / label(candidate), refusal=refusal):
        mix = candidate_config(cfg, work, candidate)
        if RunDir(path).config_path.is_file() and RunDir(path).config_differences(mix):
            why = "begun with another config"
            retire(work / "gate-check", [path.name], why=why, log=print)
        if not is_finished(path):
            print(f"== {name}: mixing network with {' '.join(candidate)}", flush=True)
            run_mix(
                mix,
                run_path=path,
                reporter=ConsoleReporter(Console()),
                log=lambda s: print(s, flush=True),
            )
        return candidate_row(cfg, candidate, path)


def merged(
    previous: dict[str, Any] | None, rows: list[dict[str, Any]], cfg: PipelineConfig
) -> dict[str, Any]:
    """A data set's record: this check's rows, then the earlier rows of other candidates (their
    runs may be gone; their numbers stay), and the largest separation among them all chosen
    if it is above zero (`choose`).
    A label names settings relative to the config of its day, so whether an earlier row's
    network is the config's is judged from the full settings it recorded (None: not recorded)."""
    named = {row["candidate"] for row in rows}
    earlier = [
        row | {"earlier": True, "configured": recorded_configured(cfg, row.get("mixnet"))}
        for row in (previous or {}).get("candidates", [])
        if row["candidate"] not in named
    ]
    every = rows + earlier
    return {
        "images": rows[0]["images"],
        "candidates": every,
        "chosen": choose(every),
        "selected_by": "validation",
    }


def choose(rows: list[dict[str, Any]]) -> str | None:
    """The candidate whose gate separates attacked from clean images most, if any does: at a
    separation at or below zero the gate gives the robust base (alpha) no more weight under
    attack than on clean images."""
    best = max(rows, key=lambda row: row["separation"], default=None)
    return best["candidate"] if best is not None and best["separation"] > 0 else None


def candidate_row(cfg: PipelineConfig, candidate: list[str], path: Path) -> dict[str, Any]:
    """A trained candidate's gate after its last epoch, on validation images."""
    summary = read_finished(path)
    last = summary["history"][-1]
    alphas = {kind: last[f"val_alpha_{kind}"] for kind in KINDS}
    return {
        "candidate": label(candidate),
        "settings": candidate,
        "images": cfg.mixnet.monitor_images,
        "configured": configured(cfg, candidate),
        "mixnet": candidate_mixnet(cfg, candidate).model_dump(mode="json"),
        "run": str(path),
        **{f"alpha_{kind}": value for kind, value in alphas.items()},
        "separation": alphas["attacked"] - alphas["clean"],
        "separation_adaptive": alphas["adaptive"] - alphas["clean"],
        "val_acc": last["val_acc"],
        "train_seconds": summary["train_seconds"],
        "plot": str(path / "plots" / "gate.png"),
    }


def adopt(work: Path, run: Path, cfg: PipelineConfig, candidate: list[str]) -> bool:
    """Copy the chosen network's run to the pipeline's adaptive mix, if it has none and the
    config holds the chosen settings (else the pipeline would train a network of its own)."""
    target = work / "adaptive-mix"
    trained = candidate_config(cfg, run.parents[1], candidate)  # on its own work's bases
    if not is_finished(run) or RunDir(run).config_differences(trained):
        print(f"not adopted: {run} is gone or was trained with other settings; check it again")
        return False
    if not configured(cfg, candidate):
        print(
            f"not adopted: set {', '.join(candidate)} under `mixnet` in the config (it holds "
            "other settings), then run this again with --adopt"
        )
        return False
    refusal = f"a pipeline is working in {work}: run this again with --adopt when it ends"
    with held_alone(work, refusal=refusal):
        if target.exists():
            print(f"{target} exists: not replaced")
            return False
        shutil.copytree(run, target, ignore=shutil.ignore_patterns(LOCK_FILE, "mlflow.json"))
    print(
        f"adopted: {target} is the {label(candidate)} network; the pipeline only chooses its gate"
    )
    return True


def markdown(records: dict[str, dict[str, Any]], command: str, machine: str) -> str:
    lines = [
        "# The gate check: the mixing network's training recipe, chosen on validation images",
        "",
        f"Written by `{command}`; machine: {machine}.",
        "",
        "Each candidate's `mixnet` settings train the benchmark's mixing network (its "
        "config otherwise) on the same bases. Mean alpha in evaluation mode after the last "
        "epoch on the first validation images: clean, under PGD on the mix's loss "
        "(`attacked`: not aimed at the gate, though its gradient runs through the gate and "
        "lowers alpha where the standard base is easier to fool, as AutoAttack's attacks do) "
        "and under PGD that also "
        "pushes the gate down (`adaptive`). The choice (**bold**) is the largest separation, "
        "attacked minus clean, if it is above zero; no test image is read. A check names its candidates; the "
        "rows of candidates checked earlier stay (their runs may be gone); whether a row's network "
        "is the config's is judged from the full settings it recorded (`?`: rows from before "
        "rows recorded them; a label names settings relative to the config of its day).",
    ]
    for name, record in records.items():
        lines += ["", f"## {name} (up to {record['images']} validation images)", ""]
        if record["chosen"] is None:
            lines += [
                "No candidate separates: no gate gives the robust base (alpha) more weight "
                "under attack than on clean images (every separation is at or below zero), so "
                "none is chosen.",
                "",
            ]
        lines += [
            "| candidate (`mixnet`) | in the config | alpha clean | alpha attacked "
            "| alpha adaptive | separation | separation (adaptive) | val acc | training (s) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in record["candidates"]:
            mark = "**" if row["candidate"] == record["chosen"] else ""
            lines.append(
                f"| {mark}{' '.join(row['settings'])}{mark} "
                f"| {YES_NO.get(row['configured'], '?')} | {row['alpha_clean']:.3f} "
                f"| {row['alpha_attacked']:.3f} | {row['alpha_adaptive']:.3f} "
                f"| {row['separation']:+.3f} | {row['separation_adaptive']:+.3f} "
                f"| {100 * row['val_acc']:.1f}% | {row['train_seconds']:.0f} |"
            )
        for row in record["candidates"]:
            slug = row["candidate"].replace("=", "-").replace("+", "_")
            plot = f"robust_gatecheck_{name.replace('-', '')}_{slug}.png"
            if Path(row["plot"]).is_file():
                shutil.copyfile(row["plot"], RESULTS / plot)
            if (RESULTS / plot).is_file():  # also for an earlier row whose run is gone
                lines += ["", f"![gate, {' '.join(row['settings'])}]({plot})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checked = {}
    for name in [] if args.report_only else args.datasets:
        cfg = load_config(PipelineConfig, CONFIGS[name], [f"threads={args.threads}"])
        checked[name] = (cfg, check(name, cfg, args.work / name, args.candidates))
    # A check of other candidates running beside this one may write the report too: one
    # process at a time reads, merges and writes it (one lock per checkout, as RESULTS is,
    # whatever --work).
    with held_in_turn(ROOT / "runs" / ".gate-check-report"):
        report(args, checked)


def read_report(path: Path, *, required: bool) -> dict[str, Any]:
    """The earlier report at `path` ({} where there is none and none is `required`)."""

    def every_data_set_has_candidates(body: dict[str, Any]) -> None:
        if not all(record["candidates"] for record in body["datasets"].values()):
            raise ValueError("a data set without candidates")

    body = read_results(path, "robust_gate_check.py", check=every_data_set_has_candidates)
    if body is None and required:
        raise ConfigError(f"no `{path}` to rewrite: run a check first")
    return {"datasets": {}} if body is None else body


def report(args: argparse.Namespace, checked: dict[str, Any]) -> None:
    previous = read_report(RESULTS / "robust-gate-check.json", required=args.report_only)
    records = previous["datasets"]
    for name in set(records) - {name for name, (_, rows) in checked.items() if rows}:
        cfg = load_config(PipelineConfig, CONFIGS[name])  # not checked now: judged again
        records[name]["candidates"] = [
            row | {"configured": recorded_configured(cfg, row.get("mixnet"))}
            for row in records[name]["candidates"]
        ]
        records[name]["chosen"] = choose(records[name]["candidates"])
    for name, (cfg, rows) in checked.items():
        if not rows:
            continue
        records[name] = merged(records.get(name), rows, cfg)
        if args.adopt:
            records[name]["adopted"] = adopt_chosen(name, records[name], cfg, args.work / name)
    command = ("python benchmarks/robust_gate_check.py " + " ".join(sys.argv[1:])).strip()
    measured = {"command": command, "machine": machine_summary()}
    if args.report_only:  # what measured the rows, not what rewrote the report
        measured = {key: previous[key] for key in measured}
    text = markdown(records, measured["command"], measured["machine"])
    if args.report_only:
        text += f"\n\nRewritten from its JSON, training nothing, by `{command}`.\n"
    body = {**measured, "datasets": records}
    print(f"wrote {write_results('robust-gate-check', text, body, out=RESULTS)}")


def adopt_chosen(name: str, record: dict[str, Any], cfg: PipelineConfig, work: Path) -> bool:
    """`adopt` the chosen candidate's network, saying so where no candidate was chosen."""
    if record["chosen"] is None:
        print(f"{name}: not adopted: no candidate separates (every separation at or below 0)")
        return False
    chosen = next(r for r in record["candidates"] if r["candidate"] == record["chosen"])
    return adopt(work, Path(chosen["run"]), cfg, chosen["settings"])


if __name__ == "__main__":
    run_script(main)
