"""Data-parallel training under torchrun: two gloo processes on this CPU against one process,
a killed two-process run resumed, and the commands that refuse to run under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killing import kill_at
from safetensors.torch import load_file
from typer.testing import CliRunner

from trustvision import distributed
from trustvision.cli import app
from trustvision.config import load_config
from trustvision.errors import ConfigError
from trustvision.robust.commands.demo import run_pipeline
from trustvision.robust.config import PipelineConfig
from trustvision.sweep.runner import run_sweep
from trustvision.sweep.spec import load_spec

ROOT = Path(__file__).parents[1]
TRAIN = ROOT / "configs/train/mnist_cnn.yaml"
# TRADES' SmallCNN without dropout has no BatchNorm and draws no random numbers: two processes
# then compute what one does (the same images, the same gradient averaged over them) up to the
# order of floating-point sums, whose effect grows as training goes on. (With BatchNorm each
# process normalises its half-batch by its own statistics, DDP's default: docs/distributed.md.)
SMALL = ["threads=1", "epochs=2", "data.train_subset=2000", "data.test_subset=500"]
SMALL += ["data.batch_size=64", "model.name=smallcnn", "model.kwargs={drop_rate: 0.0}"]
SMALL += ["optim.name=adam", "optim.lr=0.002", "optim.nesterov=false", "optim.weight_decay=0"]
TIMING = {"train_seconds", "train_images_per_s"}
FIRST_EPOCH = 1e-3  # relative, every loss of the first epoch
LATER = 0.03  # relative for losses, absolute for accuracies (6 of the 200 validation images)


def launch(tmp: Path, *args: str, processes: int = 2) -> subprocess.Popen[str]:
    """`trustvision ARGS` under torchrun (loopback rendezvous), in its own process group."""
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    env = os.environ | {"OMP_NUM_THREADS": "1", "TMPDIR": str(tmp / "tmp")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={processes}", "-m", "trustvision", *args]
    return subprocess.Popen(
        command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def torchrun(tmp: Path, *args: str) -> str:
    proc = launch(tmp, *args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def only_run(runs: Path) -> Path:
    (run,) = runs.iterdir()  # rank 1 made no run directory of its own
    return run


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("ddp")
    out = torchrun(tmp, "train", str(TRAIN), f"runs_dir={tmp / 'runs'}", *SMALL)
    return only_run(tmp / "runs"), out


def test_two_processes_train_like_one(tmp_path, two_process_run):
    run, out = two_process_run
    one = tmp_path / "one"
    subprocess.run(
        [sys.executable, "-m", "trustvision", "train", str(TRAIN), f"runs_dir={one}", *SMALL],
        check=True, capture_output=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    two_records, one_records = records(run), records(only_run(one))
    assert len(two_records) == len(one_records) == 2
    for epoch, (two, single) in enumerate(zip(two_records, one_records, strict=True)):
        assert two["train_images"] == single["train_images"] == 1792  # 28 batches of 64
        for key in ("train_loss", "val_loss", "test_loss"):
            assert two[key] == pytest.approx(single[key], rel=LATER if epoch else FIRST_EPOCH)
        for key in ("train_acc", "val_acc", "test_acc"):
            assert two[key] == pytest.approx(single[key], abs=LATER), key
    assert two_records[-1]["test_acc"] > 0.85
    # progress from rank 0 only: one line per epoch, one closing line
    assert out.count("epoch 1 ") == 1 and out.count("test accuracy") == 1


def test_rank_copies_are_removed_after_a_clean_run(two_process_run):
    run, _ = two_process_run
    assert list((run.parents[1] / "tmp").glob("trustvision-rank*")) == []


def test_a_killed_two_process_run_resumes_to_the_same_result(tmp_path, two_process_run):
    reference, _ = two_process_run
    runs = tmp_path / "runs"
    proc = launch(tmp_path, "train", str(TRAIN), f"runs_dir={runs}", *SMALL)
    kill_at(proc, runs, "*/checkpoints/epoch-0001/state.json", tree=True)
    killed = only_run(runs)
    assert not (killed / "summary.json").exists()
    assert [p.name for p in (killed / "checkpoints").iterdir()] == ["epoch-0001"]

    out = torchrun(tmp_path, "train", "--resume", str(killed))
    assert "epoch 2 " in out and "epoch 1 " not in out  # it trained the second epoch
    assert records(killed) == records(reference)
    a, b = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_diverging_two_process_run_stops_on_every_rank_and_records_it(tmp_path):
    proc = launch(tmp_path, "train", str(TRAIN), f"runs_dir={tmp_path / 'runs'}", *SMALL,
                  "optim.name=sgd", "optim.lr=1e12")  # fmt: skip
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "diverged in epoch 1" in out
    summary = json.loads((only_run(tmp_path / "runs") / "summary.json").read_text())
    assert summary["status"] == "diverged"


def test_a_command_that_cannot_run_data_parallel_is_refused(tmp_path):
    proc = launch(tmp_path, "fed", "run", "configs/fed/fmnist_lt_cpu.yaml", f"runs_dir={tmp_path}")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "this command runs in one process: launch it without torchrun" in out
    assert not list(tmp_path.glob("fmnist*"))


def test_a_sweep_and_the_robust_pipeline_refuse_to_start_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    with pytest.raises(ConfigError, match="runs in one process"):
        run_sweep(load_spec(ROOT / "configs/sweep/mnist_lr.yaml"), tmp_path / "sweep")
    with pytest.raises(ConfigError, match="runs in one process"):
        run_pipeline(load_config(PipelineConfig, ROOT / "configs/robust/demo_mnist.yaml"), tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "command",
    [
        ("compact", "export"),
        ("compact", "bench"),
        ("compact", "export-c"),
        ("fed", "eval"),
        ("fed", "compare"),
        ("robust", "import"),
        ("report",),
        ("sweep", "report"),
        ("data", "info"),
    ],
)
def test_commands_that_read_a_run_refuse_under_torchrun(tmp_path, monkeypatch, command):
    monkeypatch.setenv("WORLD_SIZE", "2")  # every process would write the same files
    result = CliRunner().invoke(app, [*command, str(tmp_path)])
    assert result.exit_code != 0
    assert "this command runs in one process" in " ".join(result.output.split())
    assert not any(tmp_path.iterdir())


def test_a_batch_is_shared_view_by_view(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    originals, augmented = torch.arange(4.0), torch.arange(4.0) + 10
    x, y = distributed.share(torch.cat([originals, augmented]), torch.arange(4))
    assert x.tolist() == [2.0, 3.0, 12.0, 13.0] and y.tolist() == [2, 3]
    with pytest.raises(Exception, match="multiple of 2"):
        distributed.share(torch.zeros(3), torch.arange(3))


def test_a_batch_the_processes_cannot_share_is_refused_before_a_run_directory(
    monkeypatch, tmp_path
):
    from trustvision.config import TrainConfig
    from trustvision.train.centralized import train_model

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    runs = tmp_path / "runs"
    args = [f"runs_dir={runs}", "data.train_subset=256", "tracking.enabled=false"]
    with pytest.raises(ConfigError, match=r"batch_size=63.*multiple of 2"):
        train_model(load_config(TrainConfig, TRAIN, [*args, "data.batch_size=63"]))
    assert not runs.exists()


def test_a_sigterm_runs_the_cleanup_that_removes_a_ranks_private_copy(tmp_path):
    """torchrun ends the other ranks with SIGTERM when one fails; by default Python would die
    without running `atexit`, leaving the rank's copy of the run directory behind."""
    script = (  # a rank joins its group (stubbed: no peers here) the way `start` does it
        "import os, signal, torch\n"
        "from trustvision import distributed\n"
        "distributed.dist.is_initialized = lambda: False\n"
        "distributed.dist.init_process_group = lambda *a, **k: None\n"
        "distributed.start(torch.device('cpu'))\n"
        "print(distributed.private_run_dir(None).parent, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "signal.pause()\n"
    )
    env = {**os.environ, "WORLD_SIZE": "2", "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    copy = Path(done.stdout.strip())
    assert copy.parent == tmp_path and copy.name.startswith("trustvision-rank")
    assert done.returncode == 128 + signal.SIGTERM and not copy.exists()
