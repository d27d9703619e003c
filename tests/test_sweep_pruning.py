"""`trustvision sweep`'s pruning: metrics.jsonl read as it is written, and a trial below the
median stopped (its process too) while a good one finishes."""

import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import optuna
import pytest
from test_sweep import TINY, spec_tree

from trustvision.config import build_config
from trustvision.errors import ConfigError
from trustvision.sweep.runner import SilentSweepReporter, TrialFailed, TrialRunner
from trustvision.sweep.spec import SweepSpec
from trustvision.sweep.study import build_pruner
from trustvision.sweep.trial import find_run_dir, new_reports, stop_process

# --- pruning: metrics.jsonl as it is written ------------------------------------------------


def test_new_reports_reads_each_complete_record_once():
    text = '{"epoch": 1, "val_acc": 0.5}\n{"epoch": 2, "loss": 1.0}\n{"epoch": 3, "val_acc": 0.7}\n'
    seen = set()
    partial = text + '{"epoch": 4, "val_'
    assert new_reports(partial, metric="val_acc", step="epoch", seen=seen) == [(1, 0.5), (3, 0.7)]
    assert new_reports(partial, metric="val_acc", step="epoch", seen=seen) == []
    grown = text + '{"epoch": 4, "val_acc": 0.8}\n'
    assert new_reports(grown, metric="val_acc", step="epoch", seen=seen) == [(4, 0.8)]
    # a resumed run rewrites the file from its checkpoint: nothing is reported twice
    assert new_reports(text, metric="val_acc", step="epoch", seen=seen) == []


def runner_and_run_dir(tmp_path, records, prune=None, good=((1, 0.8), (2, 0.9))):
    """A runner, a trial to watch whose run has `records`, and a finished trial that reported
    `good` (step, value) pairs before it."""
    prune = prune or {"metric": "val_acc", "step": "epoch", "startup_trials": 1}
    spec = build_config(SweepSpec, spec_tree(prune=prune))
    run_dir = tmp_path / "trials/trial-1/run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runner = TrialRunner(
        spec, tmp_path, jobs=1, resumable=False, reporter=SilentSweepReporter(), poll_seconds=0.05
    )
    study = optuna.create_study(direction="maximize", pruner=build_pruner(spec))
    finished = study.ask()
    for epoch, value in good:
        finished.report(value, epoch)
    study.tell(finished, 0.9)
    return runner, study.ask(), run_dir


def test_watch_prunes_a_trial_below_the_median(tmp_path):
    runner, trial, run_dir = runner_and_run_dir(tmp_path, [{"epoch": 1, "val_acc": 0.2}])
    pruned_while_watched(runner, trial, run_dir, "val_acc")
    frozen = trial.study.trials[trial.number]
    assert frozen.intermediate_values == {1: 0.2}
    assert frozen.user_attrs["run_dir"] == "trials/trial-1/run"


def test_a_metric_that_improves_the_other_way_is_reported_negated(tmp_path):
    """`prune.direction: minimize` under a maximised objective: a loss of 2.0 where the good
    trial had 0.1 is pruned (reported as -2.0 against its -0.1)."""
    prune = {"metric": "val_loss", "direction": "minimize", "startup_trials": 1}
    runner, trial, run_dir = runner_and_run_dir(
        tmp_path, [{"epoch": 1, "val_loss": 2.0}], prune=prune, good=((1, -0.1),)
    )
    pruned_while_watched(runner, trial, run_dir, "val_loss")
    assert trial.study.trials[trial.number].intermediate_values == {1: -2.0}


def pruned_while_watched(runner, trial, run_dir, metric: str) -> None:
    """Watching a live stand-in command, the runner prunes `trial`, naming `metric`."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(optuna.TrialPruned, match=metric):
            runner.watch(trial, proc, run_dir.parent, None)
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_a_pruned_trials_command_is_stopped_before_it_finishes(tmp_path):
    """The runner itself ends a pruned trial's `trustvision train` (40 epochs asked, pruned
    after its first, far below the good trial's 0.8 there)."""
    tree = spec_tree(
        prune={"metric": "val_acc", "step": "epoch", "startup_trials": 1},
        overrides=[*TINY, "epochs=40", "optim.lr=0.000001"],
        params={"seed": {"grid": [0]}},
    )
    spec = build_config(SweepSpec, tree)
    runner = TrialRunner(
        spec, tmp_path, jobs=1, resumable=False, reporter=SilentSweepReporter(), poll_seconds=0.05
    )
    study = optuna.create_study(direction="maximize", pruner=build_pruner(spec))
    good = study.ask()
    for epoch in range(1, 41):
        good.report(0.8, epoch)
    study.tell(good, 0.8)
    trial = study.ask()

    with pytest.raises(optuna.TrialPruned, match="val_acc"):
        runner(trial)

    pid = study.trials[trial.number].user_attrs["pid"]
    assert not Path(f"/proc/{pid}").exists()  # ended (and reaped) by the runner
    run_dir = find_run_dir(tmp_path / f"trials/trial-{trial.number}")
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").open()]
    assert 1 <= len(epochs) < 40 and not (run_dir / "summary.json").is_file()


def test_a_bad_step_is_pruned_even_when_a_better_one_came_in_the_same_poll(tmp_path):
    records = [{"epoch": 1, "val_acc": 0.2}, {"epoch": 2, "val_acc": 0.95}]
    runner, trial, run_dir = runner_and_run_dir(tmp_path, records)
    pruned_while_watched(runner, trial, run_dir, "val_acc")
    assert trial.study.trials[trial.number].intermediate_values == {1: 0.2}  # judged at once


@pytest.mark.parametrize("prune", [{"metric": "val_accuracy"}, {"step": "epochs"}])
def test_a_misspelt_prune_key_stops_the_sweep_naming_the_keys_there(tmp_path, prune):
    records = [{"epoch": 1, "val_acc": 0.85}, {"epoch": 2, "val_acc": 0.95}]
    prune = {"metric": "val_acc", "step": "epoch", "startup_trials": 1, **prune}
    runner, trial, run_dir = runner_and_run_dir(tmp_path, records, prune=prune)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    with pytest.raises(ConfigError, match=r"in no record .* keys are `epoch`, `val_acc`"):
        runner.watch(trial, proc, run_dir.parent, None)


def test_watch_lets_a_good_trial_finish(tmp_path):
    records = [{"epoch": 1, "val_acc": 0.85}, {"epoch": 2, "val_acc": 0.95}]
    runner, trial, run_dir = runner_and_run_dir(tmp_path, records)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert runner.watch(trial, proc, run_dir.parent, None) == (0, run_dir)
    assert trial.study.trials[trial.number].intermediate_values == {1: 0.85, 2: 0.95}


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie nobody reaped yet is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stopping_a_trial_ends_the_processes_its_command_started(tmp_path):
    """A pruned or interrupted trial's command is ended with its process group: a child it
    started (a data loader worker, a subprocess) does not outlive it, even one that ignores
    SIGTERM after the command itself exited on it."""
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(120)"
    )
    code = (
        "import subprocess, sys, time; "
        f"child = subprocess.Popen([sys.executable, '-c', {stubborn!r}]); "
        "print(child.pid, flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    said = {proc.stdout.readline().strip() for _ in range(2)}  # the two, in either order
    assert b"ignoring" in said, said  # the child ignores SIGTERM before the stop begins
    (child,) = (int(line) for line in said - {b"ignoring"})
    assert running(child)
    stop_process(proc, grace_seconds=5)
    assert proc.returncode is not None
    deadline = time.monotonic() + 5
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child)


def test_a_trial_whose_metric_is_null_or_gone_fails_alone_once_the_path_is_known(tmp_path):
    """A diverged run writes its NaN accuracy as null: that trial fails and the sweep goes on;
    a path no trial has yet resolved stops the sweep (a wrong spec, not a bad run)."""
    runner, trial, run_dir = runner_and_run_dir(tmp_path, [])
    summary = run_dir / "summary.json"
    result = partial(runner._result, trial, 0, run_dir, run_dir.parent)
    summary.write_text(json.dumps({"validation": {"top1": None}, "test": {"top1": 0.5}}))
    with pytest.raises(TrialFailed, match="not a number"):
        result()
    summary.write_text(json.dumps({"validation": {"loss": 1.0}}))
    with pytest.raises(TrialFailed, match="`top1` is missing"):
        result()  # runner_and_run_dir's study holds a completed trial: the path was right
    summary.write_text(json.dumps({"validation": {"top1": 0.7}}))  # no test number: shown only
    assert result() == 0.7
    fresh = optuna.create_study(direction="maximize").ask()
    summary.write_text(json.dumps({"validation": {"loss": 1.0}}))
    with pytest.raises(ConfigError, match="fix the metric path"):
        runner._result(fresh, 0, run_dir, run_dir.parent)
