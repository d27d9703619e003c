"""MLflow tracking: every command's run mirrored in a local store, read back with MLflow's
client; a sweep's trials nest under the sweep; a store that fails never stops a run."""

import json
import time
from pathlib import Path

import fed_tiny
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.config import TrackingConfig, TrainConfig, build_config
from trustvision.sweep.runner import run_sweep
from trustvision.sweep.spec import SweepSpec
from trustvision.tracking import (
    OFF_ENV,
    Tracker,
    TrackingWarning,
    numbers,
    saved_uri,
    shown,
    sqlite_path,
    sqlite_uri,
    start_tracking,
    store_uri,
)

ROOT = Path(__file__).parents[1]
TINY = ["data.train_subset=256", "data.test_subset=100", "data.batch_size=64", "device=cpu"]
COMMANDS = {
    "train": ["train", str(ROOT / "configs/train/mnist_cnn.yaml"), "epochs=2", *TINY],
    "robust": ["robust", "train", str(ROOT / "configs/robust/mnist_standard.yaml"), "epochs=1", *TINY],
    "compact": [
        "compact", "train", str(ROOT / "configs/compact/mnist_demo.yaml"), *TINY,
        "dual.epochs=1", "finetune.epochs=2", "unify.bn_batches=2",
    ],
    "fed": ["fed", "run", "rounds=2", "eval_every=1"],
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tracking_on(monkeypatch):
    monkeypatch.setenv(OFF_ENV, "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def runs_of(store: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri=store)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment `{experiment}` in {store}"
    return client.search_runs([found.experiment_id])


@pytest.mark.usefixtures("tracking_on")
def test_every_command_mirrors_its_run_in_the_local_store(tmp_path):
    runs_dir = tmp_path / "runs"
    for name, args in COMMANDS.items():
        extra = fed_tiny.tiny_args(runs_dir) if name == "fed" else [f"runs_dir={runs_dir}"]
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 0, (name, result.output)
    store = f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=store)
    steps = {"train": [1, 2], "robust": [1], "fed": [1, 2]}  # its epochs or rounds
    for name, step_key in (("train", "test_acc"), ("robust", "test_acc"), ("fed", "generic_acc")):
        (run,) = runs_of(store, name)
        assert run.info.status == "FINISHED"
        directory = Path(run.data.tags["trustvision.run_dir"])
        assert directory.parent == runs_dir.resolve() and (directory / "mlflow.json").is_file()
        assert "seed" in run.data.params and "data.name" in run.data.params  # the config
        history = client.get_metric_history(run.info.run_id, step_key)
        assert [m.step for m in history] == steps[name]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "summary.json", "plots"} <= artifacts
    artifacts_at = Path(client.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://"))
    assert artifacts_at.is_relative_to(runs_dir.resolve() / "mlflow-artifacts")  # beside the store
    (compact,) = runs_of(store, "compact")
    assert compact.info.status == "FINISHED" and "summary.rows.full.top1" in compact.data.metrics
    stage_two = client.get_metric_history(compact.info.run_id, "full/test_acc")
    assert [m.step for m in stage_two] == [1, 2]  # each stage's epochs, under its name


@pytest.mark.usefixtures("tracking_on")
def test_a_sweeps_trials_are_nested_runs_of_the_sweep(tmp_path):
    spec = build_config(
        SweepSpec,
        {
            "name": "lr",
            "command": "train",
            "config": str(ROOT / "configs/train/mnist_cnn.yaml"),
            "overrides": ["epochs=1", *TINY],
            "params": {"optim.lr": {"grid": [0.01, 0.1]}},
            "objective": {"metric": "validation.top1", "direction": "maximize"},
        },
    )
    run_sweep(spec, tmp_path / "sweep")
    store = f"sqlite:///{(tmp_path / 'sweep' / 'mlflow.db').resolve()}"
    runs = runs_of(store, "sweep")  # the trials too: MLflow's table nests within one experiment
    (sweep,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r is not sweep]
    assert len(trials) == 2 and sweep.info.status == "FINISHED"
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {sweep.info.run_id}
    assert sorted(t.data.params["optim.lr"] for t in trials) == ["0.01", "0.1"]
    objective = MlflowClient(tracking_uri=store).get_metric_history(sweep.info.run_id, "objective")
    assert sorted(m.step for m in objective) == [0, 1]


@pytest.mark.usefixtures("tracking_on")
@pytest.mark.parametrize("store", ["a file", "a folder", "a server that is down"])
def test_a_store_that_fails_warns_once_and_the_run_finishes(tmp_path, store):
    (tmp_path / "file").write_text("not a folder")
    broken = {
        "a file": f"tracking.uri=sqlite:///{tmp_path / 'file' / 'mlflow.db'}",
        "a folder": f"tracking.uri=sqlite:///{tmp_path}",  # MLflow retried it for over a minute
        "a server that is down": "tracking.uri=http://127.0.0.1:9",  # the discard port: closed
    }[store]
    args = [*COMMANDS["train"], f"runs_dir={tmp_path / 'runs'}", broken]
    started = time.monotonic()
    with pytest.warns(TrackingWarning, match=r"MLflow tracking of .* stopped") as caught:
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 50  # not the CLOSE_SECONDS a stalled store would take
    assert len([w for w in caught if w.category is TrackingWarning]) == 1
    (run,) = (tmp_path / "runs").glob("*/summary.json")
    assert '"status": "finished"' in run.read_text()


def test_tracking_is_off_by_switch_or_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(OFF_ENV, "on")
    off = TrainConfig(tracking=TrackingConfig(enabled=False))
    assert start_tracking(tmp_path, off) is None
    monkeypatch.setenv(OFF_ENV, "off")
    assert start_tracking(tmp_path, TrainConfig()) is None


def test_the_store_is_the_config_s_then_the_environment_s_then_runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.chdir(tmp_path)
    assert store_uri(TrackingConfig(uri="sqlite:///x.db"), tmp_path) == sqlite_uri(Path("x.db"))
    assert store_uri(TrackingConfig(), tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert store_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_only_finite_numbers_become_metrics():
    record = {"epoch": 2, "loss": 0.5, "ok": True, "nan": float("nan"), "test": {"top1": 0.9}}
    assert numbers(record) == {"epoch": 2.0, "loss": 0.5, "test.top1": 0.9}


@pytest.mark.usefixtures("tracking_on")
def test_a_relative_sqlite_address_or_odd_characters_in_runs_dir_track_where_they_say(
    tmp_path, monkeypatch
):
    """`sqlite:///rel/x.db` (README's own form) once turned tracking off; `?` in a path made
    SQLAlchemy write a stray file; both now reach the store they name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    odd = tmp_path / "q?x=1 %41"
    for extra in (["tracking.uri=sqlite:///rel/x.db"], []):
        args = [*COMMANDS["train"], f"runs_dir={odd}", *extra]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    assert len(runs_of(sqlite_uri(tmp_path / "rel" / "x.db"), "train")) == 1
    assert len(runs_of(sqlite_uri(odd / "mlflow.db"), "train")) == 1
    assert not (tmp_path / "q").exists()
    assert sqlite_path(sqlite_uri(odd / "mlflow.db")) == odd / "mlflow.db"


def test_a_resumed_run_keeps_its_store_and_no_password_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.json").write_text(json.dumps({"uri": "sqlite:////a/b.db", "run_id": "x"}))
    assert saved_uri(tmp_path, TrackingConfig()) == "sqlite:////a/b.db"  # whatever the cwd
    assert saved_uri(tmp_path, TrackingConfig(uri="sqlite:////c.db")) is None  # named: that one
    assert shown("http://alice:s3cret@host:5000/x") == "http://host:5000/x"  # $MLFLOW_TRACKING_URI
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_PASSWORD"):
        TrackingConfig(uri="http://alice:s3cret@host:5000")


@pytest.mark.usefixtures("tracking_on")
def test_a_sweep_ends_the_mlflow_run_of_a_trial_killed_before_it_could(tmp_path):
    store = sqlite_uri(tmp_path / "mlflow.db")
    (tmp_path / "trial").mkdir()
    trial = Tracker(uri=store, experiment="train", run_dir=tmp_path / "trial", name="trial")
    trial.close()  # as a pruned trial's process ends: its MLflow run stays RUNNING
    (run,) = runs_of(store, "train")
    assert run.info.status == "RUNNING"
    sweep = Tracker(uri=store, experiment="sweep", run_dir=tmp_path, name="sweep")
    sweep.end_other(tmp_path / "trial", "KILLED")
    sweep.end_other(tmp_path / "no-run", "FAILED")  # no mlflow.json: nothing to end
    sweep.close()
    (run,) = runs_of(store, "train")
    assert run.info.status == "KILLED" and not sweep.failed
