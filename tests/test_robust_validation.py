"""Choosing a mix's knobs on validation images: which images, and who may train on them (the
sweeps over alpha, the gamma bias and the temperatures are in test_robust_sweep_choice.py, the
stages kept and retired in test_robust_stages.py)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import trustvision.robust.commands.demo as pipeline
import trustvision.robust.evaluate as evaluate
from trustvision.config import DataConfig, load_config
from trustvision.data.dataset import ArraySplit, Dataset
from trustvision.data.loader import split_train_indices
from trustvision.errors import ConfigError
from trustvision.robust.config import PipelineConfig
from trustvision.runs import held_alone

ROOT = Path(__file__).parents[1]
N_TRAIN = 1000


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_dataset() -> Dataset:
    """Training image i holds i in its first two pixels and 0 in the third; test images 255."""
    index = np.arange(N_TRAIN)
    train = np.stack([index // 256, index % 256, np.zeros_like(index)], axis=1)
    labels = np.minimum(index % 13, 9).astype(np.int64)  # unequal classes
    test = np.full((50, 3), 255)
    return Dataset(
        name="toy",
        classes=tuple(str(c) for c in range(10)),
        train=ArraySplit(train.astype(np.uint8).reshape(-1, 1, 1, 3), labels),
        test=ArraySplit(test.astype(np.uint8).reshape(-1, 1, 1, 3), np.zeros(50, np.int64)),
        mean=(0.5,),
        std=(0.25,),
        source="test",
    )


def record(**split) -> dict:
    """A base's data record as `robust train` writes it."""
    return {
        "name": "toy",
        "source": "test",
        "variant": "original",
        **{"validation": 0.1, "seed": 0, "train_subset": 800, "imbalance_factor": None, **split},
    }


def decode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Training indices of [0, 1] images made by `toy_dataset`, and their third pixel."""
    pixels = (x * 255).round().long().reshape(len(x), 3).numpy()
    return pixels[:, 0] * 256 + pixels[:, 1], pixels[:, 2]


def test_validation_images_are_held_out_by_every_base_and_are_no_test_images():
    data = toy_dataset()
    bases = {"runs/standard": record(), "runs/robust": record(), "runs/gaussian": record()}
    x, y = evaluate.validation_pixels(data, bases, count=None)
    index, marker = decode(x)
    assert (marker == 0).all()  # training images, never a test image
    assert np.array_equal(y.numpy(), data.train.labels[index])
    for run, rec in bases.items():
        train, held = evaluate.base_split(data.train.labels, run, rec)
        assert not set(index) & set(train.tolist())
        assert sorted(index.tolist()) == held.tolist()
    first, _ = evaluate.validation_pixels(data, bases, count=20)
    assert torch.equal(first, x[:20])  # "the first N" is a prefix of one fixed order


def test_the_recorded_split_is_the_one_training_used():
    data = toy_dataset()
    cfg = DataConfig(name="toy", validation=0.1, train_subset=800)
    train, held = split_train_indices(data.train.labels, cfg, seed=3)
    again = evaluate.base_split(data.train.labels, "run", record(seed=3))
    assert np.array_equal(train, again[0]) and np.array_equal(held, again[1])


def test_every_prefix_of_the_validation_order_is_stratified():
    labels = np.random.default_rng(0).choice(5, size=400, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    order = evaluate.stratified_order(labels, seed=7)
    assert sorted(order.tolist()) == list(range(400))
    assert np.array_equal(order, evaluate.stratified_order(labels, seed=7))
    share = np.bincount(labels, minlength=5) / len(labels)
    for n in range(1, 401):
        counts = np.bincount(labels[order[:n]], minlength=5)
        assert np.all(np.abs(counts - n * share) < 2)


def test_mixing_network_trains_only_on_images_every_base_trained_on():
    labels = toy_dataset().train.labels
    bases = {"runs/standard": record(), "runs/robust": record()}
    val = evaluate.validation_indices(labels, bases)
    mixnet = evaluate.mixnet_train_indices(labels, bases, subset=300, seed=0)
    assert len(mixnet) == 300 and not set(mixnet.tolist()) & set(val.tolist())
    for run, rec in bases.items():
        assert set(mixnet.tolist()) <= set(evaluate.base_split(labels, run, rec)[0].tolist())
    # why the bases' split is reused: re-splitting with the mixing network's own subset holds
    # out other images and trains on some of the bases' validation images
    naive = DataConfig(name="toy", validation=0.1, train_subset=300)
    naive_train, _ = split_train_indices(labels, naive, seed=0)
    assert set(naive_train.tolist()) & set(val.tolist())


@pytest.mark.parametrize(
    ("robust", "message"),
    [
        (record(seed=1), "held out different training images"),
        (record(train_subset=700), "held out different training images"),
        (record(validation=0.0), "held out no training images"),
        ({"name": "toy", "source": "test", "variant": "original"}, "records no validation"),
    ],
)
def test_bases_that_held_out_different_images_are_refused(robust, message):
    bases = {"runs/standard": record(), "runs/robust": robust}
    with pytest.raises(ConfigError, match=message) as err:
        evaluate.validation_pixels(toy_dataset(), bases, count=10)
    assert "`runs/robust`" in str(err.value) and "`seed`" in str(err.value)


def test_asking_for_more_validation_images_than_held_out_is_refused():
    bases = {"runs/standard": record(), "runs/robust": record()}
    with pytest.raises(ConfigError, match=r"sweep\.subset"):
        evaluate.validation_pixels(toy_dataset(), bases, count=N_TRAIN)


def test_pipeline_refuses_bases_with_different_hold_outs_before_training(tmp_path):
    cfg = load_config(
        PipelineConfig,
        ROOT / "configs/robust/demo_mnist.yaml",
        ["standard.data.train_subset=30000", f"runs_dir={tmp_path}"],
    )
    with pytest.raises(ConfigError, match="same training images"):
        pipeline.run_pipeline(cfg, tmp_path / "work", log=lambda _: None)
    assert not (tmp_path / "work").exists()


def test_a_second_pipeline_on_one_work_directory_is_refused_and_touches_nothing(tmp_path):
    cfg = load_config(
        PipelineConfig, ROOT / "configs/robust/demo_mnist.yaml", [f"runs_dir={tmp_path}"]
    )
    work = tmp_path / "work"
    with (
        held_alone(work, refusal="first"),  # as a running pipeline holds it
        pytest.raises(ConfigError, match="another pipeline is working in"),
    ):
        pipeline.run_pipeline(cfg, work, log=lambda _: None)
    assert [p.name for p in work.iterdir()] == [".lock"]
