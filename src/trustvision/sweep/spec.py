"""The sweep spec: which command, which fixed overrides, which keys to search and how to choose."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from trustvision.config import (
    Seed,
    StrictModel,
    apply_overrides,
    build_config,
    parse_override,
    read_yaml,
)
from trustvision.errors import ConfigError

Scalar = bool | int | float | str


class ParamSpec(StrictModel):
    """One searched config key: a `grid`, a range (`low`, `high`, `log`, `int`) or `choices`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    grid: list[Scalar] | None = Field(default=None, min_length=1)
    low: float | None = None
    high: float | None = None
    log: bool = False  # sample the range uniformly in log space (learning rates, decays)
    integer: bool = Field(default=False, alias="int")  # the range holds whole numbers only
    choices: list[Scalar] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        ranged = self.low is not None or self.high is not None
        kinds = [
            name
            for name, given in (
                ("grid", self.grid is not None),
                ("low/high", ranged),
                ("choices", self.choices is not None),
            )
            if given
        ]
        if len(kinds) != 1:
            found = " and ".join(f"`{k}`" for k in kinds) or "none of them"
            raise ValueError(
                f"give exactly one of `grid`, a range (`low` and `high`) or `choices`; found {found}"
            )
        if not ranged and (self.log or self.integer):
            raise ValueError("`log` and `int` belong to a range (`low` and `high`)")
        for values in (self.grid, self.choices):
            # Optuna stores a choice by its index, found with `==`: true is 1 and 1.0 is 1 there
            same = [(a, b) for a, b in itertools.combinations(values or [], 2) if a == b]
            if same:
                a, b = same[0]
                raise ValueError(
                    f"{values} lists a value twice ({a!r} and {b!r} are equal to Optuna, which "
                    "would record every trial of the second as the first)"
                )
        if ranged:
            self._check_range()
        return self

    def _check_range(self) -> None:
        if self.low is None or self.high is None:
            raise ValueError("a range needs both `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"`low={self.low}` must be below `high={self.high}`")
        if self.log and self.low <= 0:
            raise ValueError(f"a `log` range needs `low` > 0, not {self.low}")
        if self.integer and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(
                f"an `int` range needs whole `low` and `high`, not {self.low}, {self.high}"
            )

    @property
    def numeric(self) -> bool:
        """Whether the values are numbers (a range, or a grid of numbers), not categories."""
        if self.grid is not None:
            return all(isinstance(v, int | float) and not isinstance(v, bool) for v in self.grid)
        return self.choices is None

    @property
    def log_scale(self) -> bool:
        """Whether plots should use a log axis: a `log` range or a log-spaced grid."""
        if self.grid is not None:
            return self.numeric and is_log_spaced([float(v) for v in self.grid])
        return self.log


def is_log_spaced(values: list[float]) -> bool:
    """Positive values whose ratios are more even than their differences (0.01, 0.03, 0.1)."""
    points = sorted(set(values))
    if len(points) < 2 or points[0] <= 0:
        return False
    if len(points) == 2:
        return points[1] / points[0] >= 10
    steps = [b - a for a, b in itertools.pairwise(points)]
    ratios = [math.log(b / a) for a, b in itertools.pairwise(points)]
    return _spread(ratios) < _spread(steps)


def _spread(steps: list[float]) -> float:
    mean = sum(steps) / len(steps)
    return max(abs(s - mean) for s in steps) / mean


# A path part that names a validation number: val, valid, validation, alone or between
# underscores (val_acc, generic_val_acc, validation.top1), not evaluation, interval or value.
VALIDATION_WORD = re.compile(r"(^|_)val(id(ation)?)?(_|$)")


class Objective(StrictModel):
    """The number the sweep optimises: a dotted path into the run's summary.json."""

    metric: str = Field(min_length=1)  # e.g. validation.top1
    direction: Literal["maximize", "minimize"] = "maximize"


class PruneSpec(StrictModel):
    """Stop unpromising trials early from the per-epoch (or per-round) records of metrics.jsonl."""

    metric: str = Field(min_length=1)  # a key of the records, e.g. val_acc
    # which way `metric` improves; default: the objective's (the pruner compares trials that way)
    direction: Literal["maximize", "minimize"] | None = None
    step: str = "epoch"  # the record key that numbers the steps (epoch, round)
    warmup: int = Field(default=0, ge=0)  # the first step at which a trial may be pruned
    startup_trials: int = Field(default=2, ge=0)  # trials that finish before any is pruned


class SweepSpec(StrictModel):
    """`trustvision sweep run`: a search over the config keys of one trustvision command."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # the study's name
    command: str = "train"  # a trustvision sub-command, words split by spaces: "fed run"
    config: str  # the command's YAML config
    overrides: list[str] = Field(default_factory=list)  # `key=value`, the same for every trial
    params: dict[str, ParamSpec] = Field(min_length=1)  # searched keys, dotted like overrides
    trials: int | None = Field(default=None, gt=0)  # for a grid: default and maximum grid size
    objective: Objective
    test_metric: str | None = None  # recorded and reported, never read by the choice
    prune: PruneSpec | None = None
    seed: Seed = 0  # the sampler's seed

    @field_validator("command")
    @classmethod
    def _command_words(cls, command: str) -> str:
        words = command.split()
        if not words:
            raise ValueError("name a trustvision sub-command, e.g. `train` or `fed run`")
        if words[0] == "sweep":
            raise ValueError("a sweep cannot run `trustvision sweep` in its trials")
        return " ".join(words)

    @field_validator("overrides")
    @classmethod
    def _overrides_parse(cls, overrides: list[str]) -> list[str]:
        for text in overrides:
            try:
                parse_override(text)
            except ConfigError as err:
                raise ValueError(str(err)) from None
        return overrides

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        fixed = {".".join(parse_override(text)[0]) for text in self.overrides}
        for key in self.params:
            if key == "runs_dir" or key in fixed:
                where = "is set by the sweep" if key == "runs_dir" else "is also in `overrides`"
                raise ValueError(f"`params.{key}` {where}: search it or fix it, not both")
        if "runs_dir" in fixed:
            raise ValueError("`overrides` sets `runs_dir`: the sweep sets it for every trial")
        grids = [key for key, param in self.params.items() if param.grid is not None]
        if grids and len(grids) != len(self.params):
            others = [f"`params.{key}`" for key in self.params if key not in grids]
            raise ValueError(
                f"{', '.join(others)} must be a `grid` too: a grid search takes grids only "
                "(or turn every grid into `choices` for a sampled search)"
            )
        if grids and self.trials is not None and self.trials > self.grid_size:
            raise ValueError(
                f"`trials={self.trials}` is more than the {self.grid_size} points of the grid: "
                f"leave `trials` out to run all {self.grid_size}"
            )
        if not grids and self.trials is None:
            raise ValueError("`trials` is needed for a sampled search (ranges or `choices`)")
        self._reads_validation()
        return self

    def _reads_validation(self) -> None:
        """The choice and the pruning read validation numbers, never a test number."""
        chosen = {"objective.metric": self.objective.metric}
        if self.prune is not None:
            chosen["prune.metric"] = self.prune.metric
        for field, path in chosen.items():
            parts = path.split(".")
            if path == self.test_metric or any(p.startswith("test") for p in parts):
                raise ValueError(
                    f"`{field}` is `{path}`, a test number: a sweep chooses on validation only "
                    "(e.g. `validation.top1`, `val_acc`); record test numbers in `test_metric`"
                )
            if not any(VALIDATION_WORD.search(part) for part in parts):
                raise ValueError(
                    f"`{field}` is `{path}`, which names no validation number: a sweep chooses "
                    "on validation only (a path with a part that is, begins or ends with, or holds "
                    "between underscores `val`, `valid` or `validation`: `validation.top1`, "
                    "`val_acc` or `selected.generic.generic_val_acc`)"
                )

    @property
    def is_grid(self) -> bool:
        """Whether every searched key is a grid (GridSampler) rather than sampled (TPE)."""
        return all(param.grid is not None for param in self.params.values())

    @property
    def grid_size(self) -> int:
        """The number of points of the grid (the product of the grids' lengths)."""
        return math.prod(len(param.grid or ()) for param in self.params.values())

    @property
    def planned_trials(self) -> int:
        """How many trials the sweep runs to the end."""
        return self.trials if self.trials is not None else self.grid_size


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read a sweep spec, apply `key=value` overrides, validate it and check its config exists."""
    tree: dict[str, Any] = apply_overrides(read_yaml(path), overrides or [])
    spec = build_config(SweepSpec, tree, origin=f"sweep spec `{path}`")
    if not Path(spec.config).is_file():
        raise ConfigError(
            f"sweep spec `{path}`: `config` file `{spec.config}` does not exist "
            "(a path relative to the directory you run the sweep from)"
        )
    return spec


def dump_spec(spec: SweepSpec) -> dict[str, Any]:
    """The spec as plain data, defaults written out and `int` spelled as in YAML."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)
