"""Checkpoints: safetensors + JSON round trips, atomic writes, corruption detected."""

import hashlib
import json
import pickle
import re
import warnings

import pytest
import torch
from safetensors import SafetensorError

from trustvision.errors import EnvironmentFailure
from trustvision.train import checkpoint as ckpt


def test_nested_state_round_trips(tmp_path):
    state = {
        "model": {"w": torch.randn(3, 4), "b": torch.arange(4)},
        "optimizer": {
            "state": {0: {"step": torch.tensor(5.0), "buf": None}},
            "groups": [{"betas": (0.9, 0.99)}],
        },
        "epoch": 7,
        "history": [{"loss": 0.5}],
    }
    ckpt.save_checkpoint(tmp_path / "epoch-0007", state)
    loaded = ckpt.load_checkpoint(tmp_path / "epoch-0007")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert torch.equal(loaded["model"]["b"], state["model"]["b"])
    assert list(loaded["optimizer"]["state"]) == [0]
    assert loaded["optimizer"]["state"][0]["buf"] is None
    assert loaded["optimizer"]["groups"][0]["betas"] == [0.9, 0.99]
    assert loaded["epoch"] == 7 and loaded["history"] == [{"loss": 0.5}]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_state_resumes_exactly(tmp_path, name):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        if name == "sgd":
            return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, torch.optim.AdamW(model.parameters(), lr=0.1)

    def step(model, opt, seed):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    model, opt = make()
    step(model, opt, 1)
    ckpt.save_checkpoint(tmp_path / "c", {"model": model.state_dict(), "opt": opt.state_dict()})
    step(model, opt, 2)

    restored, restored_opt = make()
    state = ckpt.load_checkpoint(tmp_path / "c")
    restored.load_state_dict(state["model"])
    restored_opt.load_state_dict(state["opt"])
    step(restored, restored_opt, 2)
    assert torch.equal(restored.weight, model.weight)


def test_corrupt_tensors_are_detected(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "epoch-0001", {"w": torch.ones(100)})
    data = bytearray((path / ckpt.TENSORS).read_bytes())
    data[-1] ^= 0xFF
    (path / ckpt.TENSORS).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(path)


def test_incomplete_checkpoints_are_ignored_and_old_ones_pruned(tmp_path):
    for epoch in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path / f"epoch-{epoch:04d}", {"epoch": epoch})
    (tmp_path / ".tmp-epoch-0004-123").mkdir()  # what a kill during a save leaves
    (tmp_path / "epoch-0005").mkdir()  # a folder without state.json
    assert ckpt.latest_checkpoint(tmp_path).name == "epoch-0003"
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch-0002", "epoch-0003"]
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(tmp_path / "epoch-0005")


# what the disk says, and what safetensors itself raises for it (its own error, no OSError)
FULL_DISK = [
    lambda path: OSError(28, "No space left on device", str(path)),
    lambda path: SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    ),
]


@pytest.mark.parametrize("full", FULL_DISK)
def test_a_full_disk_while_saving_leaves_the_last_checkpoint_and_no_staging_folder(
    tmp_path, monkeypatch, full
):
    first = ckpt.save_checkpoint(tmp_path / "epoch-0001", {"w": torch.ones(3)})

    def disk_full(tensors, path, metadata=None):
        with open(path, "wb") as stream:
            stream.write(b"\0" * 10)  # half a file, then the disk is full
        raise full(path)

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    with pytest.raises(EnvironmentFailure) as err:
        ckpt.save_checkpoint(tmp_path / "epoch-0002", {"w": torch.zeros(3)})
    message = str(err.value)
    assert "saving the checkpoint" in message and "No space left on device" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001"]
    assert torch.equal(ckpt.load_checkpoint(first)["w"], torch.ones(3))
    with pytest.raises(EnvironmentFailure, match=r"saving the weights .*No space left"):
        ckpt.save_weights(tmp_path / "model.safetensors", {"w": torch.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001"]


def saved(tmp_path, *epochs):
    return [
        ckpt.save_checkpoint(tmp_path / f"epoch-{e:04d}", {"w": torch.full((3,), e)})
        for e in epochs
    ]


@pytest.mark.parametrize(
    ("record", "said"),
    [
        ('{"format": "trustvision-checkpoint/1", "sha2', "truncated or not JSON"),
        ("[1, 2]", "holds a list, not a record"),
        ('{"format": "trustvision-checkpoint/1", "sha256": "00"}', "lacks tree"),
        ('{"format": "other/9", "sha256": "00", "tree": {}}', "has format `other/9`"),
    ],
)
def test_a_damaged_record_is_a_checkpoint_error_naming_it(tmp_path, record, said):
    (path,) = saved(tmp_path, 1)
    (path / ckpt.META).write_text(record)
    with pytest.raises(ckpt.CheckpointError, match=said) as err:
        ckpt.load_checkpoint(path)
    assert str(path / ckpt.META) in str(err.value)


def test_a_pickle_in_place_of_the_tensors_is_refused_even_with_a_matching_hash(tmp_path):
    (path,) = saved(tmp_path, 1)
    payload = pickle.dumps({"w": [1, 2, 3]})  # never unpickled: safetensors reads a header
    (path / ckpt.TENSORS).write_bytes(payload)
    meta = json.loads((path / ckpt.META).read_text())
    meta["sha256"] = hashlib.sha256(payload).hexdigest()
    (path / ckpt.META).write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="cannot be read as a checkpoint"):
        ckpt.load_checkpoint(path)
    (tmp_path / "weights.safetensors").write_bytes(payload)
    with pytest.raises(ckpt.CheckpointError, match="is not a safetensors weights file"):
        ckpt.load_weights(tmp_path / "weights.safetensors")


def test_a_checkpoint_without_its_tensors_is_not_taken_as_the_newest(tmp_path):
    saved(tmp_path, 1, 2)
    (tmp_path / "epoch-0002" / ckpt.TENSORS).unlink()
    assert ckpt.latest_checkpoint(tmp_path).name == "epoch-0001"


def test_resuming_skips_a_bad_newest_checkpoint_with_a_warning_naming_it(tmp_path, caplog):
    _, newest = saved(tmp_path, 1, 2)
    (newest / ckpt.TENSORS).write_bytes(b"\0" * 64)
    path, state = ckpt.load_resumable(tmp_path)
    assert path.name == "epoch-0001" and torch.equal(state["w"], torch.full((3,), 1))
    assert f"skipping checkpoint `{newest}`" in caplog.text and "corrupt" in caplog.text


def test_a_checkpoint_chosen_by_name_is_loaded_or_the_names_are_listed(tmp_path):
    saved(tmp_path, 1, 2)
    path, state = ckpt.load_resumable(tmp_path, name="epoch-0001")
    assert path.name == "epoch-0001" and int(state["w"][0]) == 1
    with pytest.raises(
        ckpt.CheckpointError, match=r"no checkpoint `epoch-0009` .*`epoch-0001`, `epoch-0002`"
    ):
        ckpt.load_resumable(tmp_path, name="epoch-0009")
    (tmp_path / "epoch-0001" / ckpt.META).write_text("[]")
    with pytest.raises(ckpt.CheckpointError, match="holds a list"):
        ckpt.load_resumable(tmp_path, name="epoch-0001")  # a named one is never skipped


def test_a_resume_with_other_processes_or_threads_warns_it_will_differ(tmp_path):
    from trustvision.config import TrainConfig
    from trustvision.runs import RunDir

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    run = RunDir.create(root=tmp_path, name="r", config=TrainConfig())
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        **{"epoch": 1, "elapsed": 1.0, "history": [{"epoch": 1}]},
        "rng": {"seed": 0, "next_epoch": 1, "processes": 2},  # written under torchrun
    }
    ckpt.save_checkpoint(run.checkpoints_dir / "epoch-0001", state)
    run.write_summary({"status": "finished", "epochs": 3})  # an end the resume goes back from
    (run.checkpoints_dir / ".tmp-epoch-0002-999999").mkdir()  # a save killed midway
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    with pytest.warns(UserWarning, match=r"2 data-parallel process\(es\) with .* resumes in 1"):
        assert ckpt.restore(run, **parts) == (1, 1.0, [{"epoch": 1}])
    assert not run.finished and not run.summary_path.exists()
    assert not list(run.checkpoints_dir.glob(".tmp-*"))
    state["rng"] |= {"processes": 1, "threads": torch.get_num_threads() + 1}
    ckpt.save_checkpoint(run.checkpoints_dir / "epoch-0002", state)
    with pytest.warns(UserWarning, match=rf"{torch.get_num_threads() + 1} thread\(s\) and"):
        ckpt.restore(run, **parts)
    state["rng"]["threads"] = torch.get_num_threads()
    ckpt.save_checkpoint(run.checkpoints_dir / "epoch-0003", state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same number: no warning
        ckpt.restore(run, **parts)


def test_a_damaged_summary_is_a_config_error_naming_the_run(tmp_path):
    from trustvision.config import TrainConfig
    from trustvision.errors import ConfigError
    from trustvision.runs import RunDir

    run = RunDir.create(root=tmp_path, name="r", config=TrainConfig())
    run.summary_path.write_text('{"status": "fini')  # cut off mid-write
    said = (
        rf"`{re.escape(str(run.path))}` holds a damaged summary\.json.*"
        rf"delete `{re.escape(str(run.summary_path))}` and resume the run with `--resume`"
    )
    with pytest.raises(ConfigError, match=said):
        assert run.finished
