"""The Optuna study of a sweep directory: its storage (SQLite), the spec and config it was begun
with (a second run must bring the same ones), its sampler and pruner, and the trials a killed
sweep left RUNNING (failed, to be retried with the same parameters)."""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from trustvision.config import build_config, dump_yaml, read_yaml
from trustvision.errors import ConfigError
from trustvision.files import write_atomic
from trustvision.sweep.spec import ParamSpec, SweepSpec, dump_spec
from trustvision.sweep.trial import find_run_dir, stop_orphan, trial_marks

SPEC_FILE = "spec.yaml"
STUDY_FILE = "study.db"
CONFIG_DIGEST_FILE = "config.sha256"


def trial_dir(out: Path, number: int) -> Path:
    """Where trial `number` writes its log and its run directory."""
    return out / "trials" / f"trial-{number}"


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the killed trials that `trial` re-runs (empty for a first run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def counted_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Finished trials that count toward `trials`: every one but those killed and re-run."""
    rerun = {number for trial in trials for number in retry_history(trial)}
    return [t for t in trials if t.state.is_finished() and t.number not in rerun]


def distribution(param: ParamSpec) -> BaseDistribution:
    """The Optuna distribution of one searched key; a grid of numbers gets a numeric one, which
    the dashboard can plot."""
    if param.grid is not None and param.numeric:
        low, high = min(param.grid), max(param.grid)  # type: ignore[type-var]
        if all(isinstance(v, int) for v in param.grid):
            return IntDistribution(int(low), int(high), log=param.log_scale)
        return FloatDistribution(float(low), float(high), log=param.log_scale)
    if param.grid is not None or param.choices is not None:
        return CategoricalDistribution(param.grid or param.choices or [])
    assert param.low is not None and param.high is not None  # a range, by the spec's checks
    if param.integer:
        return IntDistribution(int(param.low), int(param.high), log=param.log)
    return FloatDistribution(param.low, param.high, log=param.log)


def suggest(trial: optuna.Trial, key: str, param: ParamSpec) -> Any:
    """Ask Optuna for `key`'s value from its distribution."""
    found = distribution(param)
    if isinstance(found, IntDistribution):
        return trial.suggest_int(key, found.low, found.high, log=found.log)
    if isinstance(found, FloatDistribution):
        return trial.suggest_float(key, found.low, found.high, log=found.log)
    assert isinstance(found, CategoricalDistribution)
    return trial.suggest_categorical(key, list(found.choices))


def build_sampler(spec: SweepSpec, *, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """GridSampler for a grid, TPE for ranges and choices; both seeded by the spec. A resumed
    TPE search is seeded past the trials it has (seed + their number): the spec's seed alone
    would draw its first random points again, and measure them twice. With `--jobs` above 1
    Optuna reseeds the sampler in every worker thread, so a TPE search then does not repeat
    from its seed (a grid's order, shuffled here once, still does)."""
    if spec.is_grid:  # the seed shuffles the grid: the same on every run
        space = {key: list(param.grid or []) for key, param in spec.params.items()}
        return optuna.samplers.GridSampler(space, seed=spec.seed)
    return optuna.samplers.TPESampler(seed=(spec.seed + trials_so_far) % 2**32)  # numpy's range


def build_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """The median pruner when the spec asks for pruning, else none."""
    if spec.prune is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.prune.startup_trials, n_warmup_steps=spec.prune.warmup
    )


class SerialStateStorage(RDBStorage):
    """RDBStorage whose trial state changes run one at a time within the process.

    Optuna hands a queued (WAITING) trial to a worker by reading its state and setting it to
    RUNNING under `SELECT ... FOR UPDATE`, which SQLite ignores: two `--jobs` threads could both
    take the same retry or imported grid point (optuna/optuna#4002), and the second would find
    the first's trial directory. One sweep process holds a sweep directory at a time (the lock
    in `run_sweep`), so a lock here makes that read-and-set atomic.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._state_lock = threading.Lock()

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        with self._state_lock:
            return super().set_trial_state_values(trial_id, state, values)


def storage_for(out: Path) -> RDBStorage:
    """The study's SQLite storage in `out`; a generous lock timeout for `--jobs` threads."""
    url = f"sqlite:///{(out / STUDY_FILE).resolve()}"
    return SerialStateStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def read_saved_spec(out: Path) -> SweepSpec:
    """The spec a sweep directory was run with (its spec.yaml)."""
    path = out / SPEC_FILE
    if not path.is_file() or not (out / STUDY_FILE).is_file():
        raise ConfigError(
            f"`{out}` is not a sweep directory (it needs {SPEC_FILE} and {STUDY_FILE}): "
            "give the `--out` of a `trustvision sweep run`"
        )
    return build_config(SweepSpec, read_yaml(path), origin=f"`{path}`")


def load_study(spec: SweepSpec, out: Path) -> optuna.Study:
    """The study of a finished or running sweep, for reading."""
    with quiet_optuna():
        return optuna.load_study(study_name=spec.name, storage=storage_for(out))


def config_digest(spec: SweepSpec) -> str:
    """The SHA-256 of what the config file the spec's trials read says: of its parsed values,
    so that an edited comment or layout leaves it, and the finished trials, standing."""
    values = json.dumps(with_string_keys(read_yaml(spec.config)), sort_keys=True, default=str)
    return hashlib.sha256(values.encode()).hexdigest()


def with_string_keys(value: Any) -> Any:
    """`value` with every mapping's keys made strings, so that they sort."""
    if isinstance(value, dict):
        return {str(k): with_string_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_string_keys(v) for v in value]
    return value


def same_config(recorded: str, spec: SweepSpec) -> bool:
    """Whether a recorded digest is the config's: its values' digest, or its bytes' digest
    (how sweeps begun before 2026-11-29 recorded it)."""
    file_digest = hashlib.sha256(Path(spec.config).read_bytes()).hexdigest()
    return recorded in (config_digest(spec), file_digest)


def prepare_out(spec: SweepSpec, out: Path) -> None:
    """Write spec.yaml and config.sha256 into a new sweep directory, or check that an existing
    one has the same spec and that the config file its trials read has not been edited since."""
    path = out / SPEC_FILE
    resolved = dump_spec(spec)
    if path.is_file():
        previous = yaml.safe_load(path.read_text()) or {}
        changed = sorted(k for k in {*previous, *resolved} if previous.get(k) != resolved.get(k))
        if changed:
            raise ConfigError(
                f"`{out}` holds a sweep with a different spec "
                f"({', '.join(f'`{k}`' for k in changed)} differ from {path}): run the same spec "
                f"to continue it, or start fresh with another `--out` (or delete `{out}`)"
            )
    else:
        write_atomic(path, dump_yaml(resolved, sort_keys=False))
    recorded = out / CONFIG_DIGEST_FILE
    if recorded.is_file():
        if not same_config(recorded.read_text().strip(), spec):
            raise ConfigError(
                f"`{spec.config}` changed since the sweep in `{out}` began (the SHA-256 of its "
                f"values is not the one in {recorded}): the finished trials ran the old values. "
                f"Restore them to continue the sweep, or start fresh with another `--out` (or "
                f"delete `{out}`)"
            )
    else:
        write_atomic(recorded, config_digest(spec) + "\n")


def open_study(spec: SweepSpec, storage: RDBStorage) -> optuna.Study:
    """Create the study in the sweep's storage, or load it to continue."""
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        direction=spec.objective.direction,
        sampler=build_sampler(spec),
        pruner=build_pruner(spec),
        load_if_exists=True,
    )
    if trials := len(study.get_trials(deepcopy=False)):
        study.sampler = build_sampler(spec, trials_so_far=trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.set_metric_names([spec.objective.metric])
    study.set_user_attr("selected_by", "validation")
    study.set_user_attr("objective", spec.objective.model_dump())
    study.set_user_attr("test_metric", spec.test_metric)
    return study


def recover_killed(study: optuna.Study, storage: RDBStorage, out: Path) -> list[int]:
    """Fail the trials a killed sweep left RUNNING and queue each again; returns their numbers.

    Only safe because one sweep at a time holds `out` (the lock in `run_sweep`): every
    RUNNING trial then belongs to a sweep process that is gone. Its command may still run
    (a `kill -9` of the sweep alone leaves it): that process group is ended first. The retry
    keeps the killed trial's parameters and sampler bookkeeping (Optuna's own retry callback,
    so a grid completes) and its `run_dir` attribute, which a command with `--resume`
    continues.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    killed = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in killed:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if "pid" in trial.user_attrs:
            resumed = trial.user_attrs.get("run_dir")  # a retry's: the run it continued
            marks = trial_marks(trial_dir(out, trial.number), out / resumed if resumed else None)
            stop_orphan(int(trial.user_attrs["pid"]), marks)
        run_dir = find_run_dir(trial_dir(out, trial.number))
        if run_dir is not None and not trial.user_attrs.get("run_dir"):
            storage.set_trial_user_attr(trial_id, "run_dir", str(run_dir.relative_to(out)))
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback()(study, storage.get_trial(trial_id))
    return [trial.number for trial in killed]


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial log lines off: the reporter says what happened, once."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)
