"""`trustvision sweep` after a kill: a sweep killed with SIGKILL resumes without re-running a
finished trial, continues the killed trial's run, and ends the commands the kill left running
(and only those)."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from test_sweep import TINY, read_json, run_cli, spec_tree, write_spec

from trustvision.config import build_config
from trustvision.sweep.runner import run_sweep
from trustvision.sweep.spec import SweepSpec
from trustvision.sweep.study import (
    counted_trials,
    open_study,
    prepare_out,
    recover_killed,
    storage_for,
    suggest,
)
from trustvision.sweep.trial import find_run_dir, stop_orphan


@pytest.mark.slow
def test_sigkill_then_resume_completes_the_grid_without_rerunning(tmp_path):
    out = tmp_path / "out"
    two_epochs = [*(o for o in TINY if not o.startswith("epochs=")), "epochs=2"]
    grid = {"optim.lr": {"grid": [0.01, 0.03, 0.1]}}
    spec = write_spec(tmp_path / "spec.yaml", params=grid, overrides=two_epochs)
    with (tmp_path / "first.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trustvision", "sweep", "run", str(spec), "--out", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        killed, pid = wait_for_second_trial_checkpoint(out, proc, tmp_path / "first.log")
        # the trial runs in its own session: killing the sweep alone leaves it running. Held
        # stopped, it cannot finish its run before the resumed sweep ends it.
        os.killpg(pid, signal.SIGSTOP)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    killed_run = find_run_dir(out / f"trials/trial-{killed}")
    assert not (killed_run / "summary.json").exists()
    assert [p.name for p in (killed_run / "checkpoints").iterdir()] == ["epoch-0001"]
    first = find_run_dir(out / "trials/trial-0")
    before = snapshot(out / "trials/trial-0", first)
    at_kill = read_json(out / "sweep.json")  # rewritten after every finished trial
    assert [t["state"] for t in at_kill["trials"] if t["number"] == 0] == ["COMPLETE"]

    run_cli(spec, "--out", out)

    assert not Path(f"/proc/{pid}").exists()  # the resumed sweep ended the orphan first
    report = read_json(out / "sweep.json")
    assert report["trials_done"] == 3 and report["states"] == {"COMPLETE": 3}
    done = [t for t in report["trials"] if t["state"] == "COMPLETE"]
    assert sorted(t["params"]["optim.lr"] for t in done) == [0.01, 0.03, 0.1]
    assert next(t for t in report["trials"] if t["number"] == killed)["state"] == "FAIL"
    # the finished trial was not run again: one run directory, untouched, log not rewritten
    assert find_run_dir(out / "trials/trial-0") == first
    assert snapshot(out / "trials/trial-0", first) == before
    # the killed trial's re-run continued its run directory (`train --resume`) at epoch 2
    retry = next(t for t in done if f"re-run of killed trial {killed}" in t["note"])
    assert retry["run_dir"].startswith(f"trials/trial-{killed}/")
    assert read_json(out / retry["run_dir"] / "summary.json")["status"] == "finished"
    retry_log = (out / f"trials/trial-{retry['number']}/log.txt").read_text()
    assert "epoch 2 " in retry_log and "epoch 1 " not in retry_log, retry_log


def test_a_stopped_orphan_acts_on_its_sigterm(tmp_path):
    """A killed sweep's trial that is stopped (SIGSTOP, a paused job) is woken to end on the
    SIGTERM, with its own clean-up, rather than waiting out the grace for a SIGKILL."""
    cleaned = tmp_path / "cleaned"
    code = (
        "import pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(cleaned)!r}).touch(), "
        "sys.exit(143)))\n"
        "print('up', flush=True)\n"
        "time.sleep(120)\n"
    )
    orphan = subprocess.Popen(
        [sys.executable, "-c", code, "runs_dir=mark"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert orphan.stdout is not None and orphan.stdout.readline() == b"up\n"
        os.killpg(orphan.pid, signal.SIGSTOP)
        threading.Thread(target=orphan.wait, daemon=True).start()  # reaped, as init would
        assert stop_orphan(orphan.pid, {"runs_dir=mark"}, grace_seconds=60)
        assert cleaned.exists()  # the SIGTERM handler ran: no SIGKILL was needed
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_a_killed_sweeps_orphans_are_told_apart_by_their_own_arguments(tmp_path):
    """recover_killed ends a killed trial's command even when it was a retry continuing another
    trial's run (`--resume <trials/trial-5/run>`, no `runs_dir=` of its own), and leaves alone a
    process that took a recorded pid over, though its `runs_dir=.../trial-10` starts with the
    killed trial-1's folder name."""
    out = tmp_path / "out"
    out.mkdir()
    resumed = out / "trials/trial-5/run-a"

    def sleeper(*args: str) -> subprocess.Popen:
        code = "import time; time.sleep(120)"
        argv = [sys.executable, "-c", code, *args]
        return subprocess.Popen(argv, start_new_session=True)

    retry = sleeper("--resume", str(resumed.resolve()))
    bystander = sleeper(f"runs_dir={(out / 'trials/trial-10').resolve()}")
    # an orphan's parent is gone and init reaps it; here the test is its parent, so a thread
    # reaps it, or its zombie would keep /proc/<pid> (which stop_orphan waits on) for 20 s
    reaper = threading.Thread(target=retry.wait, daemon=True)
    reaper.start()
    try:
        storage = storage_for(out)
        study = optuna.create_study(study_name="s", storage=storage)
        first, second = study.ask(), study.ask()  # trial 0 (the retry) and trial 1, RUNNING
        first.set_user_attr("pid", retry.pid)
        first.set_user_attr("run_dir", str(resumed.relative_to(out)))
        second.set_user_attr("pid", bystander.pid)
        time.sleep(0.5)  # both have exec'd python: /proc shows their arguments

        assert recover_killed(study, storage, out) == [0, 1]

        reaper.join(timeout=30)
        assert retry.returncode == -signal.SIGTERM  # ended by its process group
        assert bystander.poll() is None  # a stranger's process lives on
    finally:
        for proc in (retry, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_for_second_trial_checkpoint(out, proc, log, timeout=120.0):
    """Wait until one trial is COMPLETE and another RUNNING has written its first epoch's
    checkpoint; that trial's number and its command's pid."""
    deadline = time.monotonic() + timeout
    storage = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the sweep ended before it was killed:\n{log.read_text()}"
        # trial 0's directory exists once the study is made: opening the database earlier
        # would race the sweep's creation of its tables
        if storage is None and (out / "trials/trial-0").is_dir():
            storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
        if storage is not None:
            study = optuna.load_study(study_name="lr", storage=storage)
            states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
            running = [n for n, s in states.items() if s == optuna.trial.TrialState.RUNNING]
            complete = [n for n, s in states.items() if s == optuna.trial.TrialState.COMPLETE]
            run = running and find_run_dir(out / f"trials/trial-{running[0]}")
            if complete and run and (run / "checkpoints/epoch-0001/state.json").exists():
                trial = next(t for t in study.get_trials() if t.number == running[0])
                return running[0], trial.user_attrs["pid"]
        time.sleep(0.1)
    raise AssertionError("no trial completed in time")


def snapshot(trial_dir, run_dir):
    summary = run_dir / "summary.json"
    log = trial_dir / "log.txt"
    return (
        run_dir.stat().st_mtime_ns,
        summary.stat().st_mtime_ns,
        summary.read_text(),
        log.stat().st_mtime_ns,
    )


def test_a_resumed_tpe_search_does_not_draw_its_first_points_again(tmp_path):
    """Reopened, a sampled search goes on from where it was, rather than replaying the random
    start-up points its seed drew the first time."""
    spec = build_config(
        SweepSpec, spec_tree(params={"optim.lr": {"low": 0.001, "high": 0.3}}, trials=6)
    )
    first = open_study(spec, storage_for(tmp_path))
    drawn = []
    for _ in range(3):
        trial = first.ask()
        drawn.append(suggest(trial, "optim.lr", spec.params["optim.lr"]))
        first.tell(trial, 0.5)
    again = open_study(spec, storage_for(tmp_path))
    trial = again.ask()
    assert suggest(trial, "optim.lr", spec.params["optim.lr"]) not in drawn


def test_queued_trials_go_to_one_worker_each(tmp_path):
    """Threads taking queued trials at once (the retries of a killed `--jobs` sweep) each get
    their own: SQLite ignores Optuna's row lock, so without the storage's own lock two threads
    take the same trial (plain RDBStorage did in 10 runs of 10 here)."""
    for attempt in range(3):
        (tmp_path / f"{attempt}").mkdir()
        study = optuna.create_study(storage=storage_for(tmp_path / f"{attempt}"), study_name="q")
        for value in range(6):
            study.enqueue_trial({"x": value})
        assert sorted(take_at_once(study, 6)) == list(range(6))


def take_at_once(study: optuna.Study, threads: int) -> list[int]:
    """The numbers of the trials `threads` threads get from `study.ask()`, all let go at once."""
    barrier, numbers = threading.Barrier(threads), []

    def take() -> None:
        barrier.wait()
        numbers.append(study.ask().number)

    workers = [threading.Thread(target=take) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return numbers


@pytest.mark.slow
def test_a_grid_resumed_with_fewer_jobs_than_killed_trials_runs_every_retry(tmp_path):
    """Two grid points killed while running (a `--jobs 2` sweep), resumed with one job: the
    grid sampler stops after the first retry (both killed points count as visited), and the
    sweep must still run the second."""
    out = tmp_path / "out"
    out.mkdir()
    spec = build_config(SweepSpec, spec_tree(params={"optim.lr": {"grid": [0.01, 0.03, 0.1]}}))
    prepare_out(spec, out)
    study = open_study(spec, storage_for(out))
    finished = study.ask()
    suggest(finished, "optim.lr", spec.params["optim.lr"])
    study.tell(finished, -1.0)  # below any real score: never chosen (it has no run to report)
    for _ in range(2):  # left RUNNING, as a SIGKILL leaves them
        suggest(study.ask(), "optim.lr", spec.params["optim.lr"])

    done = run_sweep(spec, out, jobs=1, poll_seconds=0.1)

    states = [t.state.name for t in done.get_trials()]
    assert states.count("COMPLETE") == 3 and "WAITING" not in states
    counted = counted_trials(done.get_trials())
    assert sorted(t.params["optim.lr"] for t in counted) == [0.01, 0.03, 0.1]
