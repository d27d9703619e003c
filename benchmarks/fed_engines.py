"""Seconds per round and peak memory: the federated engines against a bare loop (the floor).

One workload (configs/fed/fmnist_lt_cpu.yaml: Fashion-MNIST-LT, `mnist_cnn`, batch 8, 2 local
epochs) cut to 20 clients that all train every round, for FedAvg and FedLoGe, run by:

- floor: the same client steps (each sampled client's phases, objectives and optimiser)
  in a bare loop over batches made beforehand; no engine, no messages, no aggregation;
- inprocess: `trustvision fed run` with the default engine;
- flower-sim-1 / flower-sim-2: Flower's simulation (Ray), 1 or 2 client workers;
- flower-deploy: a SuperLink and one SuperNode per client on 127.0.0.1, `flwr run`.

Each setting runs in a fresh process, one torch thread per process (a Ray worker or a
SuperNode's ClientApp is a process too). Seconds per round are the run's own `round_seconds`
over the training-only rounds (round 1 warms up; only the last round evaluates, and is
left out); the floor times its steps. Peak memory is the largest sum of proportional set
sizes (PSS) over the setting's process tree, sampled every 0.2 s.

The in-process engine is compared with the floor run just before it: the two alternate
`--repeats` times and the ratio reported is the median of those paired ratios, so a machine
that speeds up or slows down during the benchmark (a shared host does) moves both sides.
The Flower settings run once each and are compared with the median floor.

    .venv/bin/python benchmarks/fed_engines.py        # writes docs/results/federated-engines.{md,json}
    .venv/bin/python benchmarks/fed_engines.py --tiny --out /tmp/fed-engines   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, run_script, write_results

CONFIG = ROOT / "configs/fed/fmnist_lt_cpu.yaml"
MODES = ("floor", "inprocess", "flower-sim-1", "flower-sim-2", "flower-deploy")
ALGORITHMS = ("fedavg", "fedloge")
GOALS = {"inprocess": 1.10, "flower-sim-1": 1.5}  # seconds per round / the floor's


def overrides(*, algorithm: str, rounds: int, tiny: bool, runs_dir: Path) -> list[str]:
    """The workload as overrides of CONFIG; `tiny` shrinks it to a smoke test."""
    common = [
        f"runs_dir={runs_dir}",
        "device=cpu",
        "num_clients=20",
        "participation=1.0",
        f"rounds={rounds}",
        f"eval_every={rounds}",
        f"checkpoint_every={rounds}",
    ]
    if algorithm != "fedloge":  # the config's algorithm, with its FedLoGe options, otherwise
        common.append(f"algorithm={algorithm}")
    if tiny:
        common += ["num_clients=3", "data.train_subset=300", "data.test_subset=200"]
        common += ["algorithm.options.ssec_steps=20"] if algorithm == "fedloge" else []
    return common


# --- one setting, in its own process ---------------------------------------------------------


def child(mode: str, args: list[str], workdir: Path) -> list[float]:
    """Seconds of each training-only round of one setting (run in this process)."""
    import torch

    from trustvision.config import load_config
    from trustvision.federated.config import FedConfig

    torch.set_num_threads(1)
    if mode == "floor":
        return floor(load_config(FedConfig, CONFIG, args))
    if mode == "flower-deploy":
        return deployed(load_config(FedConfig, CONFIG, [*args, "engine=flower"]), workdir)
    extra = [] if mode == "inprocess" else ["engine=flower", f"flower.workers={mode[-1]}"]
    from trustvision.federated.runner import run_federated

    run = run_federated(load_config(FedConfig, CONFIG, [*args, *extra]))
    return training_rounds(run.read_metrics())


def training_rounds(records: list[dict]) -> list[float]:
    """`round_seconds` of every round but the first (warm-up) and the evaluated ones."""
    return [
        r["round_seconds"] for r in records[1:] if "generic_acc" not in r and "local_acc" not in r
    ]


def deployed(cfg, workdir: Path) -> list[float]:
    """The run on a local SuperLink with one SuperNode per client."""
    from trustvision.config import dump_config
    from trustvision.federated.flower_harness import LocalDeployment
    from trustvision.runs import RunDir

    config = workdir / "run.yaml"
    config.write_text(dump_config(cfg))
    with LocalDeployment(workdir / "flower", num_nodes=cfg.num_clients) as flower:
        flower.submit(config)
        run_dir = flower.wait_for_summary(Path(cfg.runs_dir), timeout=4 * 3600)
    return training_rounds(RunDir(run_dir).read_metrics())


def floor(cfg) -> list[float]:
    """The same client steps in a bare loop over batches made beforehand, round by round."""
    from trustvision.federated.client import build_phase_optimizer, client_context, set_trainable
    from trustvision.federated.session import build_parts, round_lr, sample_clients
    from trustvision.seeds import derive_seed

    accel, federation, algorithm = build_parts(cfg)
    net = algorithm.build()
    global_state = algorithm.init_global()
    seconds = []
    for r in range(cfg.rounds - 1):  # as the engines: the last (evaluated) round is left out
        sampled = sample_clients(cfg.num_clients, cfg.clients_per_round, seed=cfg.seed, round=r)
        lr = round_lr(cfg.optim, round=r, rounds=cfg.rounds)
        spent = 0.0
        for k in sampled:
            data = federation.clients[k]
            if data.num_samples == 0:
                continue
            net.load_state_dict(
                {**global_state, **algorithm.init_client(k, global_state)}, strict=False
            )
            ctx = client_context(data, round=r, global_state=global_state, device=accel.device)
            loader = data.train_loader(federation.spec, seed=derive_seed(cfg.seed, "client", k, r))
            epoch = 0
            for phase in algorithm.phases(ctx):
                params = set_trainable(net, train=phase.train, fix=(*phase.fix, *algorithm.frozen))
                optimizer = build_phase_optimizer(params, optim=cfg.optim, lr=lr)
                for _ in range(phase.epochs):
                    premade = list(loader.epoch(epoch))
                    epoch += 1
                    net.train()
                    start = time.perf_counter()
                    for x, y in premade:
                        optimizer.zero_grad(set_to_none=True)
                        loss, _ = phase.objective(net, x, y)
                        loss.backward()
                        optimizer.step()
                    spent += time.perf_counter() - start
        seconds.append(spent)
    return seconds[1:]  # round 1 warms up, as for the engines


# --- the parent: every setting in a fresh process, its memory sampled ------------------------


def pss_bytes(pids: list[int]) -> int:
    """Sum of the proportional set sizes of `pids` (shared pages split among their users)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def measure(mode: str, algorithm: str, *, rounds: int, tiny: bool) -> dict:
    """Run one setting in a child process; its round seconds and its tree's peak PSS."""
    from trustvision.federated.flower_harness import process_tree

    with tempfile.TemporaryDirectory(prefix=f"fed-engines-{mode}-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", mode, "--algorithm", algorithm]
        command += ["--rounds", str(rounds), "--result", str(out), "--workdir", tmp]
        command += ["--tiny"] if tiny else []
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
        proc = subprocess.Popen(command, env=env)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, pss_bytes(process_tree(proc.pid)))
            time.sleep(0.2)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} / {algorithm} failed with exit code {proc.returncode}")
        seconds = json.loads(out.read_text())
    return {
        "mode": mode,
        "algorithm": algorithm,
        "round_seconds": seconds,
        "median_round_seconds": statistics.median(seconds),
        "peak_pss_mib": peak / 2**20,
    }


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (algorithm, mode): medians over repeats, ratios to the floor."""
    lines = []
    for algorithm in dict.fromkeys(r["algorithm"] for r in rows):
        mine = [r for r in rows if r["algorithm"] == algorithm]
        floors = {r["repeat"]: r["median_round_seconds"] for r in mine if r["mode"] == "floor"}
        median_floor = statistics.median(floors.values())
        for mode in dict.fromkeys(r["mode"] for r in mine):
            runs = [r for r in mine if r["mode"] == mode]
            ratios = [
                r["median_round_seconds"] / (floors[r["repeat"]] if len(runs) > 1 else median_floor)
                for r in runs
            ]
            lines.append(
                {
                    "algorithm": algorithm,
                    "mode": mode,
                    "runs": len(runs),
                    "rounds": len(runs[0]["round_seconds"]) + 2,
                    "median_round_seconds": statistics.median(
                        r["median_round_seconds"] for r in runs
                    ),
                    "min_round_seconds": min(min(r["round_seconds"]) for r in runs),
                    "max_round_seconds": max(max(r["round_seconds"]) for r in runs),
                    "vs_floor": statistics.median(ratios),
                    "vs_floor_each": ratios,
                    "peak_pss_mib": max(r["peak_pss_mib"] for r in runs),
                }
            )
    return lines


def write_report(rows: list[dict], *, machine: str, rounds: int, tiny: bool, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    payload = {
        "machine": machine,
        "rounds": rounds,
        "tiny": tiny,
        "goals": GOALS,
        "summary": summary,
        "runs": rows,
    }
    lines = [
        "# Federated engines: seconds per round and peak memory",
        "",
        "Written by `benchmarks/fed_engines.py`; do not edit by hand.",
        "",
        f"Machine: {machine}."
        + (" **Tiny smoke setting (3 clients), not the benchmark.**" if tiny else ""),
        "",
        "Workload: `configs/fed/fmnist_lt_cpu.yaml` (Fashion-MNIST-LT, `mnist_cnn`, batch 8,",
        "2 local epochs) with 20 clients, all training every round. Of each run's rounds the",
        "first (warm-up) and the last (evaluated) are left out. One torch thread per process.",
        "*floor* is the same client steps in a bare loop over batches made beforehand. The",
        "floor and the in-process engine alternate (runs = how many of each); their ratio is the",
        "median of the ratios of each in-process run to the floor run just before it (each",
        "ratio in the last column). Flower runs once and is compared with the median floor.",
        "s / round: median over runs of each run's median; min-max over all measured rounds;",
        "peak memory: the largest PSS sum over the setting's processes (Ray's and Flower's).",
        "",
        "| algorithm | setting | runs x rounds | s / round | min-max | x floor | goal | "
        "peak MiB | each ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in summary:
        goal = GOALS.get(r["mode"])
        verdict = "" if goal is None else (" (met)" if r["vs_floor"] <= goal else " (NOT met)")
        lines.append(
            f"| {r['algorithm']} | {r['mode']} | {r['runs']} x {r['rounds']} "
            f"| {r['median_round_seconds']:.2f} "
            f"| {r['min_round_seconds']:.2f}-{r['max_round_seconds']:.2f} | {r['vs_floor']:.2f} "
            f"| {f'<= {goal:.2f}{verdict}' if goal else '-'} | {r['peak_pss_mib']:.0f} "
            f"| {', '.join(f'{x:.3f}' for x in r['vs_floor_each'])} |"
        )
    lines.append("")
    write_results("federated-engines", "\n".join(lines), payload, out=out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds per run (2 are left out)")
    parser.add_argument(
        "--deploy-rounds", type=int, default=5, help="rounds of the (slow) deployment runs"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating floor / in-process pairs"
    )
    parser.add_argument("--tiny", action="store_true", help="3 clients, small subsets: a smoke run")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", choices=ALGORITHMS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.rounds, args.deploy_rounds) < 3:
        parser.error("--rounds and --deploy-rounds must be at least 3: two rounds are left out")
    if args.child:
        runs = overrides(
            algorithm=args.algorithm,
            rounds=args.rounds,
            tiny=args.tiny,
            runs_dir=args.workdir / "runs",
        )
        args.result.write_text(json.dumps(child(args.child, runs, args.workdir)))
        return

    import torch

    from trustvision.runs import machine_summary

    machine = f"{machine_summary()}, torch {torch.__version__}"
    rows = []
    for algorithm in args.algorithms:
        paired = ["floor", *(["inprocess"] if "inprocess" in args.modes else [])]
        schedule = [(mode, repeat) for repeat in range(args.repeats) for mode in paired]
        schedule += [(mode, 0) for mode in args.modes if mode not in paired]
        for mode, repeat in schedule:
            rounds = args.deploy_rounds if mode == "flower-deploy" else args.rounds
            print(f"{algorithm} / {mode} (repeat {repeat + 1}) ...", flush=True)
            rows.append(
                {**measure(mode, algorithm, rounds=rounds, tiny=args.tiny), "repeat": repeat}
            )
            print(
                f"  {rows[-1]['median_round_seconds']:.2f} s/round, {rows[-1]['peak_pss_mib']:.0f} MiB"
            )
    write_report(rows, machine=machine, rounds=args.rounds, tiny=args.tiny, out=args.out)
    print(f"wrote {args.out / 'federated-engines.md'}")


if __name__ == "__main__":
    run_script(main)
