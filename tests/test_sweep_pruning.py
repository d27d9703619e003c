"""`trustvision sweep`'s pruning: metrics.jsonl read as it is written, and a trial below the
median stopped (its process too) while a good one finishes."""

import json
import subprocess
import sys

import optuna
import pytest
from test_sweep import spec_tree

from trustvision.config import build_config
from trustvision.sweep.runner import SilentSweepReporter, TrialRunner
from trustvision.sweep.spec import SweepSpec
from trustvision.sweep.study import build_pruner
from trustvision.sweep.trial import new_reports, stop_process

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


def runner_and_run_dir(tmp_path, records):
    spec = build_config(
        SweepSpec, spec_tree(prune={"metric": "val_acc", "step": "epoch", "startup_trials": 1})
    )
    run_dir = tmp_path / "trials/trial-1/run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runner = TrialRunner(
        spec, tmp_path, jobs=1, resumable=False, reporter=SilentSweepReporter(), poll_seconds=0.05
    )
    study = optuna.create_study(direction="maximize", pruner=build_pruner(spec))
    good = study.ask()
    for epoch, acc in [(1, 0.8), (2, 0.9)]:
        good.report(acc, epoch)
    study.tell(good, 0.9)
    return runner, study.ask(), run_dir


def test_watch_prunes_a_trial_below_the_median_and_its_process_ends(tmp_path):
    runner, trial, run_dir = runner_and_run_dir(tmp_path, [{"epoch": 1, "val_acc": 0.2}])
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(optuna.TrialPruned, match="val_acc"):
            runner.watch(trial, proc, run_dir.parent, None)
    finally:
        stop_process(proc)
    assert proc.returncode is not None
    frozen = trial.study.trials[trial.number]
    assert frozen.intermediate_values == {1: 0.2}
    assert frozen.user_attrs["run_dir"] == "trials/trial-1/run"


def test_watch_lets_a_good_trial_finish(tmp_path):
    records = [{"epoch": 1, "val_acc": 0.85}, {"epoch": 2, "val_acc": 0.95}]
    runner, trial, run_dir = runner_and_run_dir(tmp_path, records)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert runner.watch(trial, proc, run_dir.parent, None) == (0, run_dir)
    assert trial.study.trials[trial.number].intermediate_values == {1: 0.85, 2: 0.95}
