"""The run directory's policy for a config that differs from the one a run was begun with."""

import errno
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trustvision.compact.config import CompactConfig
from trustvision.compact.train import train_compact
from trustvision.config import TrainConfig, dump_config, load_config
from trustvision.errors import ConfigError
from trustvision.federated.config import FedConfig
from trustvision.federated.runner import run_federated
from trustvision.files import write_atomic
from trustvision.robust.commands.train import train_robust
from trustvision.robust.config import RobustTrainConfig
from trustvision.runs import LOCK_FILE, RunDir
from trustvision.train.centralized import train_model
from trustvision.train.recipe import torch_threads

ROOT = Path(__file__).parents[1]
SMALL = ["data.train_subset=256", "data.test_subset=100", "data.batch_size=64", "epochs=1"]


def test_a_new_directory_is_created_and_the_same_config_continues_it(tmp_path):
    cfg = TrainConfig()
    run, existed = RunDir.open_or_create(tmp_path / "run", root=tmp_path, name="x", config=cfg)
    assert not existed and run.config_path.read_text() == dump_config(cfg)
    again, existed = RunDir.open_or_create(tmp_path / "run", root=tmp_path, name="x", config=cfg)
    assert existed and again.path == run.path


def test_speed_only_settings_may_differ_but_nothing_else(tmp_path):
    path = tmp_path / "run"
    RunDir.open_or_create(path, root=tmp_path, name="x", config=TrainConfig(threads=1))
    _, existed = RunDir.open_or_create(
        path, root=tmp_path / "elsewhere", name="x", config=TrainConfig(threads=2)
    )
    assert existed
    other = TrainConfig(epochs=5, optim={"lr": 0.5})
    with pytest.raises(ConfigError, match=r"different config \(epochs, optim.lr differ\)"):
        RunDir.open_or_create(path, root=tmp_path, name="x", config=other)
    assert load_config(TrainConfig, path / "config.yaml").epochs == TrainConfig().epochs


def test_the_update_policy_replaces_the_config(tmp_path):
    path = tmp_path / "run"
    RunDir.open_or_create(path, root=tmp_path, name="x", config=TrainConfig())
    RunDir.open_or_create(
        path, root=tmp_path, name="x", config=TrainConfig(epochs=7), policy="update"
    )
    assert load_config(TrainConfig, path / "config.yaml").epochs == 7


def begun_with(path: Path, config) -> None:
    """A run directory killed before its first checkpoint, begun with `config`."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.yaml").write_text(dump_config(config))


def train(cfg, path):
    return train_model(cfg, resume_dir=path)


def robust_train(cfg, path):
    return train_robust(cfg, run_path=path)


def compact_train(cfg, path):
    return train_compact(cfg, run_dir=path)


def fed_run(cfg, path):
    return run_federated(cfg, resume_dir=path)


SYSTEMS = {
    "train": (
        TrainConfig,
        ROOT / "configs/train/mnist_cnn.yaml",
        train,
        "trustvision train --resume",
    ),
    "robust train": (
        RobustTrainConfig,
        ROOT / "configs/robust/mnist_standard.yaml",
        robust_train,
        "trustvision robust train --resume",
    ),
    "compact train": (
        CompactConfig,
        ROOT / "configs/compact/mnist_demo.yaml",
        compact_train,
        "trustvision compact train --resume",
    ),
    "fed run": (
        FedConfig,
        ROOT / "configs/fed/fmnist_lt_cpu.yaml",
        fed_run,
        "trustvision fed run --resume",
    ),
}


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_system_refuses_a_run_begun_with_another_config_the_same_way(tmp_path, system):
    model, path, run, hint = SYSTEMS[system]
    overrides = [f"runs_dir={tmp_path}", "device=cpu", "seed=1"]
    if system == "compact train":
        overrides += ["data.train_subset=256", "data.test_subset=100", "data.batch_size=64"]
    elif system == "fed run":
        overrides += ["rounds=1", "data.train_subset=256", "num_clients=3"]
    else:
        overrides += SMALL
    begun = load_config(model, path, overrides)
    now = load_config(model, path, [*overrides, "seed=2"])
    begun_with(tmp_path / "run", begun)
    with torch_threads(1), pytest.raises(ConfigError) as refused:
        run(now, tmp_path / "run")
    message = str(refused.value)
    assert "holds a run of a different config (seed differ)" in message
    assert f"`{hint} {tmp_path / 'run'}`" in message
    assert load_config(model, tmp_path / "run" / "config.yaml").seed == 1  # left as it was
    assert not (tmp_path / "run" / "summary.json").exists()


def test_the_recipe_restores_torch_threads_even_after_an_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not the 1 a parallel test worker starts with
    try:
        with pytest.raises(RuntimeError, match="inside"), torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_summary_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_summary({"accuracy": 0.5})
    before = run.summary_path.read_text()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run.write_summary({"accuracy": 0.9})
    assert run.summary_path.read_text() == before
    assert [p.name for p in run.path.iterdir()] == ["summary.json"]  # no temporary file left


def test_a_plot_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A report's plot rewritten on a full disk keeps the old picture (save_figure renders in
    memory and writes as write_atomic does), and a new one is a real PNG."""
    from trustvision.report.figures import plt, save_figure

    path = tmp_path / "plots/curve.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    with pytest.raises(OSError, match="No space left"):
        save_figure(fig, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]  # no temporary file left


def test_text_is_written_as_utf8(tmp_path):
    write_atomic(tmp_path / "note.md", "alpha ∈ [0.8, 1]\n")
    assert (tmp_path / "note.md").read_bytes() == "alpha ∈ [0.8, 1]\n".encode()


def test_a_run_another_process_trains_is_refused_until_that_process_ends(tmp_path):
    path = tmp_path / "run"
    holder = (
        "import sys, time\n"
        "from trustvision.config import TrainConfig\n"
        "from trustvision.runs import RunDir\n"
        f"RunDir.open_or_create({str(path)!r}, root='.', name='x', config=TrainConfig())\n"
        "print('holding', flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "TRUSTVISION_TRACKING": "off"}
    with subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, env=env) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"holding"
            with pytest.raises(ConfigError, match="is in use: another process is training"):
                RunDir.open_or_create(path, root=tmp_path, name="x", config=TrainConfig())
        finally:
            proc.kill()
    _, existed = RunDir.open_or_create(path, root=tmp_path, name="x", config=TrainConfig())
    assert existed  # the kernel dropped the dead process's lock


def test_a_run_is_held_until_its_summary_and_this_process_may_open_it_again(tmp_path):
    path = tmp_path / "run"
    RunDir.open_or_create(path, root=tmp_path, name="x", config=TrainConfig())
    again, existed = RunDir.open_or_create(path, root=tmp_path, name="x", config=TrainConfig())
    assert existed
    probe = (
        "import fcntl, sys\n"
        f"handle = open({str(path / LOCK_FILE)!r}, 'w')\n"
        "try:\n"
        "    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n"
        "    sys.exit(1)\n"
    )
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 1
    again.write_summary({"status": "finished"})
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_held_in_turn_waits_for_the_holder_instead_of_refusing(tmp_path):
    hold = (
        "import sys\n"
        "from trustvision.runs import held_in_turn\n"
        "print('ready', flush=True)\n"
        f"with held_in_turn(__import__('pathlib').Path({str(tmp_path / 'report')!r})):\n"
        "    print('holding', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    # unbuffered: a buffered readline could take "holding" too, out of select's sight
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "bufsize": 0}
    with subprocess.Popen([sys.executable, "-c", hold], **pipes) as first:
        assert first.stdout is not None and first.stdout.readline() == b"ready\n"
        assert first.stdout.readline() == b"holding\n"
        with subprocess.Popen([sys.executable, "-c", hold], **pipes) as second:
            try:
                assert second.stdout is not None and second.stdout.readline() == b"ready\n"
                waiting, _, _ = select.select([second.stdout], [], [], 2.0)
                assert not waiting  # no "holding" while the first holds it
                assert first.stdin is not None and second.stdin is not None
                first.communicate(b"done\n", timeout=30)
                out, _ = second.communicate(b"done\n", timeout=30)
                assert out.strip() == b"holding" and second.returncode == 0
            finally:
                first.kill()
                second.kill()
