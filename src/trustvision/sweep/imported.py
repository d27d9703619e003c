"""Continue a sweep whose directory is gone (another machine, a cleaned `runs/`) from the trial
records an earlier run of the same spec left in its sweep.json, or in a report built from it.

Optuna has no import of a study from a report, so the finished trials are added as frozen
COMPLETE trials (`Study.add_trial`) and, for a grid, the points none of them ran are queued
(`Study.enqueue_trial`): `run_sweep` then counts the imported trials as done and runs only the
queued ones. Failed, pruned and killed records are not imported: their points run again.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from trustvision.errors import ConfigError
from trustvision.sweep.spec import SweepSpec, dump_spec
from trustvision.sweep.study import (
    STUDY_FILE,
    distribution,
    open_study,
    prepare_out,
    quiet_optuna,
    same_config,
    storage_for,
)

# What an earlier sweep's spec must share with this one for its trials to count here.
SAME_SEARCH = ("command", "overrides", "params", "objective", "config")

# The fields of a sweep.json trial record that become the imported trial's own, or belong to
# the earlier sweep (its chosen record's `config`); the rest of a record is kept verbatim under
# the imported trial's `imported` user attribute.
RECORD_FIELDS = (
    *("number", "state", "params", "validation", "test", "seconds", "run_dir", "note"),
    *("config", "imported"),
)


def same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two parameter sets name the same grid point (1 and 1.0 alike)."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] and isinstance(a[k], bool) == isinstance(b[k], bool) for k in a
    )


def check_same_search(
    spec: SweepSpec, searched: dict[str, Any], config_sha256: str | None, *, source: str
) -> None:
    """Refuse the trials of `source` unless its sweep (`searched`, its spec as sweep.json
    records it, and the SHA-256 of its config's values) ran this spec's search. Paths (the
    config, a data file an override names) are compared by name: another machine's differ."""
    ours, theirs = portable(dump_spec(spec)), portable(searched)
    if differ := [k for k in SAME_SEARCH if theirs.get(k) != ours.get(k)]:
        raise ConfigError(
            f"{source} is of another search: its {', '.join(f'`{k}`' for k in differ)} "
            "differ from this spec's"
        )
    if config_sha256 is not None and not same_config(str(config_sha256), spec):
        raise ConfigError(
            f"`{spec.config}` is not the file the trials of {source} ran (its SHA-256 "
            "differs): restore that config to continue them, or sweep afresh"
        )


def portable(searched: dict[str, Any]) -> dict[str, Any]:
    """A sweep's spec with its config, and any override's value that is a path, as names."""
    overrides = [
        f"{key}={by_name(value)}" if sep else item
        for item in searched.get("overrides") or []
        for key, sep, value in [str(item).partition("=")]
    ]
    return {**searched, "config": by_name(str(searched.get("config"))), "overrides": overrides}


def by_name(value: Any) -> Any:
    """`value` with every string that is a path (holds a "/") replaced by its file name, in
    mappings and lists too: what another machine's checkout changes of a spec or config."""
    if isinstance(value, dict):
        return {k: by_name(v) for k, v in value.items()}
    if isinstance(value, list):
        return [by_name(v) for v in value]
    return Path(value).name if isinstance(value, str) and "/" in value else value


def import_trials(
    spec: SweepSpec, out: Path, records: Sequence[dict[str, Any]], *, source: str
) -> list[dict[str, Any]]:
    """Begin the sweep of `spec` in the new directory `out` with the COMPLETE trials among
    `records` (sweep.json trial records) and, for a grid, queue every point none of them ran.

    Returns the points queued; with no COMPLETE record nothing is written (the sweep begins as
    any other). Each imported trial keeps its validation value (the objective), its test value
    and time, and records `source` and whatever else its record held under the `imported`
    user attribute; it has no run directory here. Every check comes before anything is
    written: a refused import leaves no study behind.
    """
    from trustvision.sweep.runner import exclusive  # torch: only once a sweep is written

    finished = [r for r in records if r["state"] == TrialState.COMPLETE.name]
    if not finished:
        return []
    check_records(spec, finished, source)
    distributions = {key: distribution(param) for key, param in spec.params.items()}
    try:
        trials = [frozen(spec, record, distributions, source) for record in finished]
    except ValueError as err:  # a value outside its range or choices
        raise ConfigError(f"a trial of {source} does not fit this spec: {err}") from None
    with exclusive(out), quiet_optuna():  # as `sweep run`: no other sweep, no other folder
        if (out / STUDY_FILE).exists():
            raise ConfigError(f"`{out}` already holds a study: import trials only into a new one")
        prepare_out(spec, out)
        study = open_study(spec, storage_for(out))
        study.add_trials(trials)
        queued = [] if not spec.is_grid else unrun_points(spec, finished)
        for point in queued:
            study.enqueue_trial(point)
    return queued


def check_records(spec: SweepSpec, finished: Sequence[dict[str, Any]], source: str) -> None:
    """Refuse records that are not finished trials of this spec's search, or that a continued
    sweep could not complete from (a grid's subset, a point twice)."""
    keys = set(spec.params)
    for record in finished:
        if set(record["params"]) != keys or record.get("validation") is None:
            raise ConfigError(
                f"trial {record.get('number')} of {source} searched {sorted(record['params'])} "
                f"with validation {record.get('validation')}, not a finished trial of this "
                f"spec's {sorted(keys)}"
            )
    if not spec.is_grid:  # a sampled search may draw a point twice: two measurements
        return
    if spec.planned_trials < spec.grid_size:
        raise ConfigError(
            f"this spec runs {spec.planned_trials} of its grid's {spec.grid_size} points (a "
            "seeded subset): only a whole grid is continued from imported trials"
        )
    points = grid_points(spec)
    if off := [r for r in finished if not any(same_point(r["params"], p) for p in points)]:
        raise ConfigError(
            f"trial {off[0].get('number')} of {source} ran {off[0]['params']}, which is not a "
            f"point of this spec's grid: its trials are of another search"
        )
    for i, record in enumerate(finished):
        if any(same_point(record["params"], other["params"]) for other in finished[:i]):
            raise ConfigError(
                f"{source} holds two finished trials of {record['params']}: import one of them"
            )


def frozen(
    spec: SweepSpec,
    record: dict[str, Any],
    distributions: dict[str, optuna.distributions.BaseDistribution],
    source: str,
) -> optuna.trial.FrozenTrial:
    """One finished trial record as an Optuna trial to add to the study."""
    extra = {k: v for k, v in record.items() if k not in RECORD_FIELDS}
    # a trial imported once already keeps where it was first measured
    first = record.get("imported") or {"from": source, "number": record.get("number")}
    attrs: dict[str, Any] = {
        "seconds": record.get("seconds"),
        "imported": {**extra, "from": first["from"], "number": first["number"]},
    }
    if spec.test_metric and record.get("test") is not None:
        attrs[spec.test_metric] = record["test"]
    return optuna.trial.create_trial(
        params=record["params"],
        distributions=distributions,
        value=float(record["validation"]),
        user_attrs=attrs,
    )


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of the spec's grid, in grid order."""
    keys = list(spec.params)
    grids = [list(spec.params[key].grid or []) for key in keys]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grids)]


def unrun_points(spec: SweepSpec, finished: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid's points, in grid order, that no finished record ran."""
    points = grid_points(spec)
    return [p for p in points if not any(same_point(p, r["params"]) for r in finished)]
