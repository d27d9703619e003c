"""The training core on real MNIST: determinism, resume after a real kill, divergence stop."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killing import kept_by_resume, kill_at
from safetensors.torch import load_file

from trustvision.config import TrainConfig, load_config
from trustvision.errors import DivergenceError
from trustvision.report.console import format_record
from trustvision.runs import RunDir
from trustvision.train import checkpoint as ckpt
from trustvision.train.centralized import resume_training, train_model

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "configs/train/mnist_cnn.yaml"
TIMING_KEYS = {"train_seconds", "train_images_per_s"}


def small_config(tmp_path, *extra):
    return load_config(
        TrainConfig,
        DEMO,
        [
            f"runs_dir={tmp_path / 'runs'}",
            "epochs=3",
            "data.train_subset=3000",
            "data.test_subset=1000",
            "data.batch_size=64",
            "data.augment.rotation=10",
            "model.kwargs={drop_rate: 0.25}",
            *extra,
        ],
    )


def comparable(run_path):
    lines = (run_path / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """One epoch of the small config, trained once: the tests below only read its directory."""
    return train_model(small_config(tmp_path_factory.mktemp("one-epoch"), "epochs=1"))


def test_same_seed_same_run_bit_for_bit(tmp_path, one_epoch_run):
    first = one_epoch_run
    second = train_model(small_config(tmp_path, "epochs=1"))
    assert first.path != second.path  # two runs, not one directory read twice
    assert comparable(first.path) == comparable(second.path)
    a, b = load_file(first.path / "model.safetensors"), load_file(second.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_has_everything(one_epoch_run):
    run = one_epoch_run
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["seed"] == 0
    assert summary["environment"]["torch"] == torch.__version__
    assert len(summary["test"]["per_class"]) == 10
    assert summary["test"]["top1"] > 0.8  # 3,000 images, one epoch: far above chance (10%)
    assert {"head", "middle", "tail"} <= set(summary["test"])
    assert (run.path / "config.yaml").is_file()
    assert (run.path / "plots/curves.png").stat().st_size > 1000
    assert (run.path / "plots/per_class.png").stat().st_size > 1000


def test_killed_run_resumes_to_identical_metrics(tmp_path):
    # a third of small_config's images: three epochs, of which a kill after the first leaves
    # one or two to resume, with augmentation and dropout drawing random numbers throughout
    shorter = ["data.train_subset=1000", "data.test_subset=500"]
    reference = train_model(small_config(tmp_path / "ref", *shorter))

    runs = tmp_path / "killed" / "runs"
    overrides = [f"runs_dir={runs}", "epochs=3", *shorter]
    overrides += [
        "data.batch_size=64",
        "data.augment.rotation=10",
        "model.kwargs={drop_rate: 0.25}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "trustvision", "train", str(DEMO), *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_at(proc, runs, "*/checkpoints/epoch-0001/state.json")
    (run_dir,) = runs.iterdir()
    assert ckpt.latest_checkpoint(run_dir / "checkpoints").name in {"epoch-0001", "epoch-0002"}
    assert not (run_dir / "summary.json").exists()
    checkpoint = ckpt.latest_checkpoint(run_dir / "checkpoints")
    kept = kept_by_resume(run_dir, checkpoint)

    resumed = resume_training(run_dir)
    assert kept_by_resume(run_dir, checkpoint) == kept  # continued, not started over
    assert comparable(resumed.path) == comparable(reference.path)
    a = load_file(reference.path / "model.safetensors")
    b = load_file(resumed.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    import trustvision.train.centralized as centralized

    honest = centralized.cross_entropy

    def poisoned(**kwargs):
        objective = honest(**kwargs)
        calls = {"n": 0}

        def step(model, x, y):
            calls["n"] += 1
            loss, logits = objective(model, x, y)
            return (loss * float("nan") if calls["n"] > 20 else loss), logits

        return step

    monkeypatch.setattr(centralized, "cross_entropy", poisoned)
    cfg = small_config(tmp_path, "epochs=2", "data.train_subset=1000")  # 14 steps per epoch
    with pytest.raises(DivergenceError) as err:
        train_model(cfg)
    message = str(err.value)
    assert "diverged in epoch 2" in message and "epoch-0001" in message and "optim.lr" in message
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"
    state = ckpt.load_checkpoint(run_dir / "checkpoints/epoch-0001")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_huge_learning_rate_exits_with_divergence_code(tmp_path):
    from typer.testing import CliRunner

    from trustvision.cli import app

    args = ["train", str(DEMO), f"runs_dir={tmp_path}", "epochs=1", "data.train_subset=2000"]
    args += ["optim.lr=1e12", "optim.schedule=constant", "optim.nesterov=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "diverged" in result.output


def _strict(text: str):
    """json.loads that refuses the bare NaN / Infinity tokens strict readers reject."""

    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_a_loss_that_stays_finite_while_the_evaluation_overflows_is_divergence(tmp_path):
    """The issue's probe: lr 1e6 gives a huge but finite training loss and a NaN test loss;
    the run must stop as diverged, keep no model.safetensors and write strict JSON."""
    cfg = small_config(
        tmp_path, "epochs=2", "data.train_subset=200", "data.test_subset=200", "optim.lr=1e6"
    )
    with pytest.raises(DivergenceError, match=r"diverged in epoch 1: the (weights|test loss|val)"):
        train_model(cfg)
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = _strict((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert not (run_dir / "model.safetensors").exists()
    assert not (run_dir / "metrics.jsonl").exists()  # the diverged epoch is not recorded


def test_run_files_are_strict_json(tmp_path):
    from trustvision.runs import RunDir, strict_json

    assert _strict(strict_json({"a": [float("nan"), 1.0], "b": {"c": float("inf")}})) == {
        "a": [None, 1.0],
        "b": {"c": None},
    }
    run = RunDir(tmp_path)
    run.log({"epoch": 1, "few": float("nan")})
    run.write_summary({"status": "finished", "few": float("-inf")})
    assert _strict(run.metrics_path.read_text()) == {"epoch": 1, "few": None}
    assert _strict(run.summary_path.read_text())["few"] is None


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """Two short epochs, trained once; each test resumes a copy of its directory."""
    tmp_path = tmp_path_factory.mktemp("two-epochs")
    cfg = small_config(tmp_path, "epochs=2", "data.train_subset=512", "data.test_subset=200")
    return train_model(cfg)


def test_a_checkpoint_records_the_processes_and_threads_that_computed_it(two_epoch_run):
    path, state = ckpt.load_resumable(two_epoch_run.checkpoints_dir)
    assert path.name == "epoch-0002"
    assert state["rng"]["processes"] == 1 and state["rng"]["threads"] == torch.get_num_threads()


def test_resume_falls_back_past_a_corrupt_checkpoint_or_starts_where_told(tmp_path, two_epoch_run):
    from typer.testing import CliRunner

    from trustvision.cli import app

    reference = two_epoch_run
    weights = load_file(reference.path / "model.safetensors")
    for how in ("fallback", "named"):
        run_dir = tmp_path / how
        shutil.copytree(reference.path, run_dir)
        (run_dir / "summary.json").unlink()  # as if killed after the last checkpoint
        (run_dir / "model.safetensors").unlink()
        args = ["train", "--resume", str(run_dir)]
        newest = run_dir / "checkpoints/epoch-0002" / ckpt.TENSORS
        if how == "fallback":
            newest.write_bytes(b"\0" * 64)
        else:
            args += ["--checkpoint", "epoch-0001"]
        before = newest.stat().st_mtime_ns
        kept = kept_by_resume(run_dir, run_dir / "checkpoints/epoch-0001")
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert kept_by_resume(run_dir, run_dir / "checkpoints/epoch-0001") == kept
        # the intact epoch-0002 of "named" was not merely loaded: epoch 2 was written again
        assert newest.stat().st_mtime_ns != before
        # epoch 2 was trained again from epoch 1 and ends exactly where the first run did
        records = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["epoch"] for r in records] == [1, 2]
        again = load_file(run_dir / "model.safetensors")
        assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_an_epoch_line_shows_validation_before_test():
    line = format_record({"epoch": 3, "train_acc": 0.5, "val_acc": 0.61, "test_acc": 0.6})
    assert line == "epoch 3  train 50.00%  val 61.00%  test 60.00%"


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_layout_switch_holds_on_the_cpu_too(channels_last):
    from trustvision.models import create_model
    from trustvision.train.loop import Accel

    accel = Accel(torch.device("cpu"), channels_last=channels_last)
    model = accel.prepare_model(create_model("mnist_cnn", num_classes=10, in_channels=3))
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 64 x 32 x 3 x 3
    x = accel.prepare_batch(torch.rand(2, 3, 28, 28))
    for tensor in (conv.weight, x):  # more than one channel: the two layouts differ
        assert tensor.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert tensor.is_contiguous() != channels_last
    assert model(x).shape == (2, 10)


def test_a_run_killed_before_its_first_checkpoint_starts_over_with_clean_metrics(
    tmp_path, two_epoch_run
):
    rows = comparable(two_epoch_run.path)
    assert [row["epoch"] for row in rows] == [1, 2]
    run = RunDir(tmp_path / "run")
    shutil.copytree(two_epoch_run.path, run.path)
    shutil.rmtree(run.checkpoints_dir)  # as a kill in the first epoch leaves it...
    run.summary_path.unlink()  # ...with the rows it had logged
    resumed = resume_training(run.path)
    assert comparable(resumed.path) == rows
