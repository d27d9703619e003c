"""Checkpoints hold every client's personal state; a resumed run ends exactly as an unbroken one."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from killing import kept_by_resume, kill_at
from safetensors.torch import load_file

from trustvision.config import dump_config, load_config
from trustvision.errors import DivergenceError
from trustvision.federated.config import FedConfig
from trustvision.federated.runner import evaluate_run, resume_federated, run_federated
from trustvision.federated.session import TIMING_KEYS
from trustvision.federated.tensors import states_equal
from trustvision.train import checkpoint as ckpt
from trustvision.train.recipe import torch_threads


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models train as fast on one thread, and far faster when other jobs share the CPU."""
    with torch_threads(1):
        yield


def resumable_config(tmp_path, *extra):
    return load_config(FedConfig, None, [*resumable_config_args(tmp_path), *extra])


def resumable_config_args(tmp_path):
    return [
        f"runs_dir={tmp_path}",
        "device=cpu",
        "data.name=fashion-mnist",
        "data.imbalance_factor=10",
        "data.train_subset=800",
        "data.test_subset=300",
        "data.batch_size=32",
        "data.augment={rotation: 10}",
        "model.name=mnist_cnn",
        "model.kwargs={drop_rate: 0.2}",  # dropout: torch's RNG must be reseeded per client
        "num_clients=5",
        "participation=0.6",
        "rounds=4",
        "local_epochs=1",
        "eval_every=2",
        "checkpoint_every=2",
        "optim.schedule=cosine",
        "algorithm.name=fedloge",
        "algorithm.options.ssec_steps=30",
    ]


def comparable(run):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in run.read_metrics()]


def final_checkpoint(run):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run.checkpoints_dir))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The unbroken run of the default resumable config, trained once (on one thread, as the
    tests' runs): the tests read it or resume copies of it, never change it."""
    with torch_threads(1):
        return run_federated(resumable_config(tmp_path_factory.mktemp("ref")))


def test_resume_after_a_stop_gives_identical_numbers_and_tensors(tmp_path, reference):
    # killed in round 4: round 3 was logged but the last checkpoint is round 2's
    stopped = run_federated(resumable_config(tmp_path / "cut"), stop_after=3)
    assert not stopped.summary_path.exists() and len(stopped.read_metrics()) == 3
    checkpoint = ckpt.latest_checkpoint(stopped.checkpoints_dir)
    kept = kept_by_resume(stopped.path, checkpoint)
    resumed = resume_federated(stopped.path)
    assert kept_by_resume(resumed.path, checkpoint) == kept  # continued, not started over

    assert json.dumps(comparable(resumed)) == json.dumps(comparable(reference))
    a, b = final_checkpoint(reference), final_checkpoint(resumed)
    assert states_equal(a["global"], b["global"])
    assert sorted(a["personal"]) == sorted(b["personal"])
    assert all(states_equal(a["personal"][k], b["personal"][k]) for k in a["personal"])
    wa, wb = (
        load_file(reference.path / "global.safetensors"),
        load_file(resumed.path / "global.safetensors"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.dumps(reference.read_summary()["headline"]) == json.dumps(
        resumed.read_summary()["headline"]
    )


def test_checkpoint_holds_every_trained_clients_personal_state(reference):
    run = reference  # 4 rounds of 3 of 5 clients: its last checkpoint is round 4's
    state = final_checkpoint(run)

    trained = sorted({k for record in run.read_metrics() for k in record["clients"]})
    assert sorted(state["personal"]) == trained
    assert all(set(s) == {"phi.weight", "phi.bias"} for s in state["personal"].values())
    assert state["round"] == 4 and len(state["history"]) == 4
    assert not any(k.startswith("phi.") for k in state["global"])


def test_run_directory_has_metrics_plots_and_summary(tmp_path):
    run = run_federated(resumable_config(tmp_path, "rounds=2", "algorithm=fedavg"))

    records = run.read_metrics()
    summary = run.read_summary()
    assert [r["round"] for r in records] == [1, 2]
    assert {"generic_acc", "local_acc", "local_acc_masked", "local_acc_unmasked"} <= set(
        records[-1]
    )
    assert {"generic_head", "generic_tail", "local_few", "generic_many"} <= set(records[-1])
    assert len(summary["final"]["generic"]["generic"]["per_class"]) == 10
    assert summary["data"]["train_counts"][0] > summary["data"]["train_counts"][-1]  # long-tailed
    assert (run.plots_dir / "accuracy_per_round.png").stat().st_size > 1000
    assert (run.plots_dir / "per_class_vs_frequency.png").stat().st_size > 1000


def test_a_killed_process_resumes_to_identical_metrics(tmp_path):
    extra = ["rounds=6", "checkpoint_every=2", "eval_every=3", "local_epochs=2"]
    reference = run_federated(resumable_config(tmp_path / "ref", *extra))

    runs = tmp_path / "killed"
    config = tmp_path / "config.yaml"
    config.write_text(dump_config(resumable_config(runs, *extra)))
    code = "from trustvision.federated.cli import fed_app; fed_app()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    kill_at(proc, runs, "*/checkpoints/round-00002/state.json")
    (run_dir,) = runs.iterdir()
    assert not (run_dir / "summary.json").exists()
    checkpoint = ckpt.latest_checkpoint(run_dir / "checkpoints")
    kept = kept_by_resume(run_dir, checkpoint)

    resumed = resume_federated(run_dir)
    assert kept_by_resume(run_dir, checkpoint) == kept  # continued, not started over

    assert json.dumps(comparable(resumed)) == json.dumps(comparable(reference))
    a, b = final_checkpoint(reference), final_checkpoint(resumed)
    assert states_equal(a["global"], b["global"])
    assert all(states_equal(a["personal"][k], b["personal"][k]) for k in a["personal"])


def test_divergence_stops_with_the_fix_and_a_summary(tmp_path):
    cfg = resumable_config(tmp_path, "optim.lr=1e12", "algorithm=fedavg", "model.kwargs={}")
    with pytest.raises(DivergenceError) as err:
        run_federated(cfg)
    message = str(err.value)
    assert "round 1" in message and "optim.lr" in message
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


def test_resume_skips_a_corrupt_newest_checkpoint_or_starts_where_named(tmp_path, reference):
    newest = ckpt.latest_checkpoint(reference.checkpoints_dir)
    assert [p.name for p in ckpt.list_checkpoints(reference.checkpoints_dir)] == [
        "round-00002",
        "round-00004",
    ]
    for how in ("fallback", "named"):
        run_dir = tmp_path / how
        shutil.copytree(reference.path, run_dir)
        (run_dir / "summary.json").unlink()
        tensors = run_dir / "checkpoints" / newest.name / ckpt.TENSORS
        if how == "fallback":
            tensors.write_bytes(b"\0" * 64)
        before = tensors.stat().st_mtime_ns
        kept = kept_by_resume(run_dir, run_dir / "checkpoints/round-00002")
        if how == "fallback":
            resumed = resume_federated(run_dir)
        else:
            resumed = resume_federated(run_dir, checkpoint="round-00002")
        assert kept_by_resume(run_dir, run_dir / "checkpoints/round-00002") == kept
        # rounds 3-4 were trained again (the intact round-00004 of "named" was not just loaded)
        assert tensors.stat().st_mtime_ns != before
        assert json.dumps(comparable(resumed)) == json.dumps(comparable(reference))
        assert states_equal(
            final_checkpoint(resumed)["global"], final_checkpoint(reference)["global"]
        )


def test_a_stop_before_the_first_checkpoint_resumes_without_doubled_rows(tmp_path):
    """Stopped after round 1 with no checkpoint yet: the resumed run starts over, and
    metrics.jsonl holds each round once (it had kept the first run's round 1 and appended)."""
    stopped = run_federated(resumable_config(tmp_path, "rounds=3"), stop_after=1)
    assert len(stopped.read_metrics()) == 1
    assert ckpt.latest_checkpoint(stopped.checkpoints_dir) is None

    resumed = resume_federated(stopped.path)

    assert [row["round"] for row in resumed.read_metrics()] == [1, 2, 3]


def test_a_resume_on_other_threads_warns_and_an_evaluation_does_not(tmp_path, reference):
    copy = tmp_path / "copy"
    shutil.copytree(reference.path, copy)
    with torch_threads(2), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing resumes in an evaluation
        evaluate_run(copy)
    with (
        torch_threads(2),
        pytest.warns(UserWarning, match=r"1 thread\(s\) and resumes in 1 with 2"),
    ):
        resume_federated(copy, checkpoint="round-00002")
