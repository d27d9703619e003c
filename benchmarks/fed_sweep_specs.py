"""What benchmarks/fed_sweep.py sweeps: each federated method's own most important knob and
its grid, the follow-up sweeps, which methods inherit FedAvg's chosen learning rate, the
sweep spec of one (setting, method), a `trustvision sweep` spec, the second stage's grid, and
where a stage's sweep lies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import FED_SETTINGS as SETTINGS

from trustvision.sweep.trial import format_override

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
# Then the learning rate, at the value validation chose for the method's own knob (one step of
# coordinate descent; the method then has had twice FedAvg's trials, which its reports say):
# FedAvg's rate moved from the config's 0.03 to 0.2 and 0.8, FedLoGe's stayed there.
FOLLOW_UP: dict[str, tuple[str, list[float]]] = {"fedloge": ("optim.lr", LR)}
# A method whose own knob is not the learning rate trains at the rate validation chose for
# FedAvg on the same setting (each trains locally with FedAvg's SGD): at the config's 0.03
# FedAvg's validation accuracy was 10 points below its chosen rate's on `gap_cnn`.
INHERITS_LR = {a for a, (key, _) in KNOBS.items() if key != "optim.lr" and a not in FOLLOW_UP}
# Scored on local accuracy: FedPer and FedRep have no global model; Ditto's lambda and
# FedBABU's fine-tuning epochs act only on the personal model (Ditto's global model is FedAvg's,
# FedBABU's generic accuracy is measured before it fine-tunes), so their generic accuracy is
# the same at every value and a generic score would choose by the tie-break alone.
SCORED_LOCAL = {"fedper", "fedrep", "ditto", "fedbabu"}


def objective(algorithm: str) -> tuple[str, str]:
    """The summary.json paths of a trial's validation score and of its test number."""
    kind = "local" if algorithm in SCORED_LOCAL else "generic"
    return f"selected.{kind}.{kind}_val_acc", f"selected.{kind}.{kind}_acc"


def follow_up_name(algorithm: str) -> str:
    """The directory and report name of a method's learning-rate follow-up sweep."""
    return f"{algorithm}-lr"


def sweep_name(algorithm: str, fixed: dict[str, Any] | None) -> str:
    """A method's own sweep, or with `fixed` (its own knob's chosen value) its follow-up."""
    return follow_up_name(algorithm) if fixed else algorithm


def knob(name: str) -> tuple[str, list[float]]:
    """The knob and first grid of a sweep, by name (a method or its follow-up)."""
    follow_ups = {follow_up_name(a): knob for a, knob in FOLLOW_UP.items()}
    return follow_ups[name] if name in follow_ups else KNOBS[name]


def spec(
    setting: str,
    algorithm: str,
    *,
    fixed: dict[str, Any] | None = None,
    inherited: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sweep spec of one (setting, algorithm), at the `inherited` values (FedAvg's chosen
    learning rate, `inherited_lr`); with `fixed` (the values validation chose for its own
    knob), the spec of its follow-up sweep."""
    key, grid = FOLLOW_UP[algorithm] if fixed else KNOBS[algorithm]
    metric, test = objective(algorithm)
    choice = [] if algorithm == "fedloge" else [f"algorithm={algorithm}"]
    if choice and KNOBS[algorithm][0].startswith("algorithm."):  # a section, not a name
        choice = [f"algorithm.name={algorithm}", "algorithm.options={}"]
    choice += [format_override(k, v) for k, v in {**(inherited or {}), **(fixed or {})}.items()]
    return {
        "name": f"{setting}-{sweep_name(algorithm, fixed)}",
        "command": "fed run",
        # relative, so that a sweep continues from any checkout (CIFAR-10's data source is not)
        "config": SETTINGS[setting]["config"],
        "overrides": [*SETTINGS[setting]["overrides"], *choice, "seed=0", "device=cpu"],
        "params": {key: {"grid": grid}},
        "objective": {"metric": metric, "direction": "maximize"},
        "test_metric": test,
        "seed": 0,
    }


def method_of(name: str) -> str:
    """The method a sweep belongs to (a follow-up's name ends in -lr)."""
    return next(a for a in FOLLOW_UP if name == follow_up_name(a)) if name not in KNOBS else name


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
