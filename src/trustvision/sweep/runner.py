"""Run a sweep: an Optuna study in `<out>/study.db` whose trials are trustvision commands.

<out>/
    spec.yaml      the resolved spec; a second run must bring the same one
    config.sha256  the SHA-256 of the spec's config values; a second run must find them unchanged
    study.db       the Optuna study (SQLite): `optuna-dashboard sqlite:///<out>/study.db`
    trials/trial-<number>/log.txt and trials/trial-<number>/<run directory>/
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from trustvision.errors import ConfigError
from trustvision.runs import LOCK_FILE, held_alone
from trustvision.sweep.report import write_report
from trustvision.sweep.spec import SweepSpec
from trustvision.sweep.study import (
    SPEC_FILE,
    STUDY_FILE,
    counted_trials,
    open_study,
    prepare_out,
    quiet_optuna,
    recover_killed,
    storage_for,
    suggest,
    trial_dir,
)
from trustvision.sweep.trial import (
    LOG_NAME,
    MetricNotANumber,
    check_prune_keys,
    child_env,
    find_run_dir,
    format_override,
    log_tail,
    new_reports,
    read_metric,
    stop_process,
    trial_argv,
)
from trustvision.tracking import Tracker, sweep_tracker, trial_env
from trustvision.train.recipe import one_process_only


class TrialFailed(Exception):
    """A trial's command exited with an error (or wrote no summary); the sweep goes on."""


class SweepInterrupted(BaseException):
    """SIGINT or SIGTERM reached the sweep.

    A BaseException on purpose: Optuna then leaves the trial RUNNING, exactly as a killed
    sweep does, so the next `sweep run` re-runs it rather than counting it as failed.
    """


class SweepReporter(Protocol):
    """What a sweep shows while it runs (the CLI draws a rich progress bar)."""

    def start(self, *, done: int, total: int, retried: Sequence[int]) -> None: ...
    def trial_started(self, number: int, params: dict[str, Any]) -> None: ...
    def trial_finished(self, trial: FrozenTrial) -> None: ...
    def finish(self) -> None: ...


class SilentSweepReporter:
    """A reporter that shows nothing (tests, library use)."""

    def start(self, *, done: int, total: int, retried: Sequence[int]) -> None:
        pass

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        pass

    def trial_finished(self, trial: FrozenTrial) -> None:
        pass

    def finish(self) -> None:
        pass


class TrialRunner:
    """The objective Optuna calls: run one trial's command and return its validation metric."""

    def __init__(
        self,
        spec: SweepSpec,
        out: Path,
        *,
        jobs: int,
        resumable: bool,
        reporter: SweepReporter,
        poll_seconds: float,
    ) -> None:
        self.spec = spec
        self.out = out
        self.config = Path(spec.config).resolve()
        self.env = child_env(jobs)
        self.resumable = resumable
        self.reporter = reporter
        self.poll_seconds = poll_seconds
        self.stop = threading.Event()

    def __call__(self, trial: optuna.Trial) -> float:
        if self.stop.is_set():
            raise SweepInterrupted
        resume = self._resume_dir(trial)
        params = {key: suggest(trial, key, param) for key, param in self.spec.params.items()}
        directory = trial_dir(self.out, trial.number)
        if directory.exists():
            raise ConfigError(
                f"`{directory}` exists but the study has no record of it: was {STUDY_FILE} "
                f"replaced? Start fresh with another `--out` (or delete `{self.out}`)"
            )
        directory.mkdir(parents=True)
        trial.set_user_attr("run_dir", self._relative(resume))
        self.reporter.trial_started(trial.number, params)
        argv = trial_argv(
            command=self.spec.command,
            config=self.config,
            overrides=[*self.spec.overrides, *(format_override(k, v) for k, v in params.items())],
            trial_dir=directory.resolve(),
            resume=resume,
        )
        began = time.monotonic()
        with (directory / LOG_NAME).open("wb") as log:
            # Its own session: a Ctrl-C reaches the sweep, which stops its trials as retries,
            # and a killed sweep's orphans can be found and ended by their group (recover_killed).
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        trial.set_user_attr("pid", proc.pid)
        try:
            returncode, run_dir = self.watch(trial, proc, directory, resume)
        finally:
            stop_process(proc)
            trial.set_user_attr("seconds", round(time.monotonic() - began, 1))
        return self._result(trial, returncode, run_dir, directory)

    def _resume_dir(self, trial: optuna.Trial) -> Path | None:
        # Only a retry starts with attributes: those of the killed trial it re-runs.
        inherited = trial.user_attrs.get("run_dir")
        if not (self.resumable and inherited):
            return None
        path = (self.out / inherited).resolve()
        return path if (path / "config.yaml").is_file() else None

    def watch(
        self,
        trial: optuna.Trial,
        proc: subprocess.Popen[bytes],
        directory: Path,
        run_dir: Path | None,
    ) -> tuple[int, Path | None]:
        """Poll the trial's process until it ends: find its run directory, report, prune.

        Returns the exit status and the run directory; raises TrialPruned when the pruner
        says so and SweepInterrupted on a signal (the caller ends the process either way).
        """
        seen: set[int] = set()
        while True:
            returncode = proc.poll()
            if self.stop.is_set():
                raise SweepInterrupted
            if run_dir is None:
                run_dir = find_run_dir(directory)
                if run_dir is not None:
                    trial.set_user_attr("run_dir", self._relative(run_dir))
            if run_dir is not None and self.spec.prune is not None:
                self._report(trial, run_dir, seen, may_prune=returncode is None)
            if returncode is not None:
                if returncode == 0 and run_dir is not None and self.spec.prune and not seen:
                    check_prune_keys(self.spec.prune, run_dir / "metrics.jsonl")
                return returncode, run_dir
            self.stop.wait(self.poll_seconds)

    def _report(
        self, trial: optuna.Trial, run_dir: Path, seen: set[int], *, may_prune: bool
    ) -> None:
        assert self.spec.prune is not None
        metrics = run_dir / "metrics.jsonl"
        if not metrics.is_file():
            return
        prune = self.spec.prune
        reports = new_reports(metrics.read_text(), metric=prune.metric, step=prune.step, seen=seen)
        # The pruner ranks reports in the objective's direction: a metric that improves the
        # other way is reported negated (so it shows negated in optuna-dashboard too).
        sign = -1.0 if prune.direction not in (None, self.spec.objective.direction) else 1.0
        for step, value in reports:  # each step judged: a poll may bring several
            trial.report(sign * value, step)
            if may_prune and trial.should_prune():
                raise optuna.TrialPruned(f"`{prune.metric}` {value:.4g} at {prune.step} {step}")

    def _result(
        self, trial: optuna.Trial, returncode: int, run_dir: Path | None, directory: Path
    ) -> float:
        if returncode != 0:
            self._fail(
                trial,
                f"`trustvision {self.spec.command}` exited with status {returncode}",
                directory,
            )
        summary_path = run_dir / "summary.json" if run_dir is not None else None
        if summary_path is None or not summary_path.is_file():
            self._fail(
                trial, "the command finished without writing a run's summary.json", directory
            )
        assert summary_path is not None
        summary = json.loads(summary_path.read_text())
        where = f"`{self._relative(summary_path)}`"
        try:
            value = read_metric(summary, self.spec.objective.metric, where=where)
        except MetricNotANumber as err:  # this run's value (a diverged run's null): it fails
            self._fail(trial, str(err), directory)
        except ConfigError as err:  # no such path: the spec is wrong, unless others had it
            if not trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                trial.set_user_attr("error", str(err))
                raise
            self._fail(trial, str(err), directory)
        if self.spec.test_metric is not None:  # shown, never chosen on: a gap is no failure
            with contextlib.suppress(ConfigError):
                test = read_metric(summary, self.spec.test_metric, where=where)
                trial.set_user_attr(self.spec.test_metric, test)
        return value

    def _fail(self, trial: optuna.Trial, error: str, directory: Path) -> NoReturn:
        trial.set_user_attr("error", error)
        trial.set_user_attr("log_tail", log_tail(directory / LOG_NAME))
        raise TrialFailed(error)

    def _relative(self, path: Path | None) -> str | None:
        return None if path is None else str(path.resolve().relative_to(self.out.resolve()))


def _reopen(spec: SweepSpec, out: Path) -> tuple[optuna.Study, list[int], int]:
    """The study in `out` (made on first use) stamped with this machine, the trials a kill left
    running failed and queued again: (study, their numbers, trials done)."""
    prepare_out(spec, out)
    storage = storage_for(out)
    study = open_study(spec, storage)
    from trustvision.runs import machine_summary  # torch: only once work starts

    study.set_user_attr("machine", machine_summary())
    retried = recover_killed(study, storage, out)
    return study, retried, len(counted_trials(study.get_trials(deepcopy=False)))


def run_sweep(
    spec: SweepSpec,
    out: Path,
    *,
    jobs: int = 1,
    resumable: bool = False,
    reporter: SweepReporter | None = None,
    poll_seconds: float = 1.0,
) -> optuna.Study:
    """Run (or continue) the sweep of `spec` in `out` until it has `spec.planned_trials` trials.

    Finished trials are never run again; trials a killed sweep left running are run again
    (continuing their run directory when `resumable`: the command takes `--resume`).
    `jobs` trials run at once, the cores shared between them. SIGINT or SIGTERM stops the
    running trials and raises SweepInterrupted; the same call later goes on from there.
    """
    one_process_only()  # every process would run the whole study
    reporter = reporter or SilentSweepReporter()
    with exclusive(out), quiet_optuna():
        study, retried, done = _reopen(spec, out)
        runner = TrialRunner(
            spec,
            out,
            jobs=jobs,  # each trial's threads from `jobs` alone: a resumed trial gets as many
            resumable=resumable,
            reporter=reporter,
            poll_seconds=poll_seconds,
        )
        tracker = sweep_tracker(out, spec)
        runner.env.update(trial_env(tracker))  # the trials' MLflow runs nest under the sweep's
        reported = threading.Lock()

        def finished(trial: FrozenTrial) -> None:
            reporter.trial_finished(trial)
            if tracker is not None:
                track_trial(tracker, out, trial)
            with reported:  # sweep.json and .md say where a running (or killed) sweep stands
                write_report(out)

        reporter.start(done=done, total=spec.planned_trials, retried=retried)
        try:
            with _stop_on_signals(runner.stop):
                _optimize(
                    study,
                    runner,
                    planned=spec.planned_trials,
                    done=done,
                    jobs=jobs,
                    finished=finished,
                )
        finally:
            reporter.finish()
            if tracker is not None and (runner.stop.is_set() or sys.exc_info()[0] is not None):
                tracker.close()  # an interrupted sweep continues its MLflow run when resumed
        if runner.stop.is_set():
            raise SweepInterrupted
    if tracker is not None:
        tracker.finish({"status": "finished", "trials": len(study.trials)})
    return study


def track_trial(tracker: Tracker, out: Path, trial: FrozenTrial) -> None:
    """A finished trial in the sweep's MLflow run: a completed one's objective (a pruned one's
    value is its last intermediate report, not the objective); a pruned or failed one's own
    MLflow run ended, which its killed process left running."""
    if trial.state == TrialState.COMPLETE:
        tracker.metrics({"objective": trial.value}, step=trial.number)
    elif trial.user_attrs.get("run_dir"):
        status = "KILLED" if trial.state == TrialState.PRUNED else "FAILED"
        tracker.end_other(out / trial.user_attrs["run_dir"], status)


def _optimize(
    study: optuna.Study,
    runner: TrialRunner,
    *,
    planned: int,
    done: int,
    jobs: int,
    finished: Callable[[FrozenTrial], None],
) -> None:
    """Run trials until `planned` are done, the runner is stopped, or a round runs none.

    One `optimize` call may not do: a grid sampler stops it once no grid point is unvisited,
    and a killed trial counts as visited while its retry still waits in the queue.
    """
    while done < planned and not runner.stop.is_set():
        study.optimize(
            runner,
            n_trials=planned - done,
            n_jobs=jobs,
            catch=(TrialFailed,),
            callbacks=[lambda _, trial: finished(trial)],
        )
        before, done = done, len(counted_trials(study.get_trials(deepcopy=False)))
        if done == before:
            return


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold `out` for one sweep at a time; the kernel drops the lock when the process dies."""
    others = [p for p in out.iterdir() if p.name != LOCK_FILE] if out.is_dir() else []
    if others and not (out / SPEC_FILE).is_file():
        raise ConfigError(
            f"`{out}` is not empty and holds no sweep ({SPEC_FILE}): give another `--out`"
        )
    refusal = (
        f"another `trustvision sweep run` is working in `{out}`: wait for it to end, "
        "or give another `--out`"
    )
    with held_alone(out, refusal=refusal):
        yield


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (trials then end their processes) instead of killing us."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
