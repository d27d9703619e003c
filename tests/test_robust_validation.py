"""Choosing a mix's knobs on validation images: which images, who may train on them, and the
sweeps over alpha, the gamma bias and the temperatures."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from robust_toys import toy_base
from torch import nn

import trustvision.robust.commands.demo as pipeline
import trustvision.robust.evaluate as evaluate
import trustvision.robust.sweep as sweep
from trustvision.config import DataConfig, load_config
from trustvision.data.dataset import ArraySplit, Dataset
from trustvision.data.loader import split_train_indices
from trustvision.errors import ConfigError
from trustvision.robust.commands.common import PointStore, admission_rule
from trustvision.robust.config import PipelineConfig, SweepSettings
from trustvision.robust.mixing import MixedClassifier, build_adaptive
from trustvision.robust.runs import model_sha256
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


def test_fixed_grid_attacks_each_mix_once():
    settings = SweepSettings(
        alphas=(1.0, 0.0, 0.5), temperatures_std=(1.0, 2.0), temperatures_rob=(0.5, 1.0, 2.0)
    )
    grid = sweep.fixed_grid(settings)
    assert len(grid) == 2 + 2 * 3 + 3
    assert {g for g in grid if g[0] == 0.0} == {(0.0, 1.0, None), (0.0, 2.0, None)}
    assert {g for g in grid if g[0] == 1.0} == {
        (1.0, None, 0.5),
        (1.0, None, 1.0),
        (1.0, None, 2.0),
    }


def test_choose_breaks_ties_towards_temperatures_of_one():
    points = [
        {"alpha": 0.9, "temperature_std": 2.0, "temperature_rob": 1.0},
        {"alpha": 0.9, "temperature_std": 1.0, "temperature_rob": 1.0},
        {"alpha": 0.9, "temperature_std": 1.0, "temperature_rob": 0.5},
    ]
    for p in points:
        p.update(clean_acc=0.9, robust_acc=0.7)
    chosen = sweep.choose(points, tolerance=0.03, reference=0.7, key=sweep.FIXED_KNOBS)
    assert chosen["temperature_std"] == 1.0 and chosen["temperature_rob"] == 1.0


def test_a_models_hash_changes_with_its_weights_and_its_mix_knobs():
    def mix(alpha=0.5, s_h=1.0, seed=1):
        return MixedClassifier(toy_base(0), toy_base(seed), alpha=alpha, temperature_rob=s_h)

    same = model_sha256(mix())
    assert model_sha256(mix()) == same
    assert len({same, model_sha256(mix(alpha=0.6)), model_sha256(mix(s_h=2.0))}) == 3
    assert model_sha256(mix(seed=2)) != same
    assert model_sha256(toy_base(0)) != model_sha256(toy_base(1))


def test_bias_sweep_clean_accuracy_matches_the_mix_itself(monkeypatch):
    mix = build_adaptive(toy_base(0), toy_base(1), input_shape=(1, 16, 16), width=8, gamma_bias=0.3)
    mix.eval()
    x = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    y = mix(x).argmax(1)
    y[::3] = (y[::3] + 1) % 10  # some wrong labels so that accuracies differ
    monkeypatch.setattr(sweep, "robust_accuracy", lambda *a, **k: sweep.Robustness(0.5, 0.0))
    settings = SweepSettings(subset=10, temperatures_std=(1.0, 3.0), temperatures_rob=(0.3, 1.0))
    grid = sweep.gate_grid((-2.0, 2.0), (0.5, 1.0), ((0.0, 1.0), (0.1, 0.9)), settings)
    points = sweep.bias_sweep(mix, images=(x, y), grid=grid, eps=0.1, settings=settings)
    assert len(points) == 32 and float(mix.gamma_bias) == pytest.approx(0.3)  # knobs restored
    assert float(mix.gamma_scale) == 1.0 and float(mix.alpha_high) == 1.0
    for point in points:
        sweep.set_knobs(mix, point)
        assert point["clean_acc"] == float(evaluate.clean_correct(mix, x, y).float().mean())


def test_the_lazy_gate_sweep_chooses_what_attacking_every_point_would(monkeypatch):
    mix = build_adaptive(toy_base(0), toy_base(1), input_shape=(1, 16, 16), width=8).eval()
    nn.init.normal_(mix.mixnet.linear.weight, std=30.0, generator=torch.Generator().manual_seed(0))
    x = torch.rand(60, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    y = mix.standard(x).argmax(1)  # clean accuracy falls as alpha grows, robustness rises
    attacked = []

    def fake_robust_accuracy(model, *args, give_up_below=None, **kwargs):  # alpha up: robust
        attacked.append(give_up_below)
        acc = round(float(model.gamma_bias) / 10 + 0.5, 3)
        if give_up_below is not None and acc < give_up_below:  # stopped early: a bound
            return sweep.Robustness(acc + 0.001, 0.0, complete=False)
        return sweep.Robustness(acc, 0.0)

    monkeypatch.setattr(sweep, "robust_accuracy", fake_robust_accuracy)
    settings = SweepSettings(subset=10, temperatures_rob=(0.5, 1.0), tolerance=0.05)
    grid = sweep.gate_grid((-3.0, -1.0, 0.0, 1.0, 2.0, 4.0), (1.0, 2.0), ((0.0, 1.0),), settings)
    full = sweep.bias_sweep(mix, images=(x, y), grid=grid, eps=0.1, settings=settings)
    lazy = sweep.bias_sweep(
        mix, images=(x, y), grid=grid, eps=0.1, settings=settings, reference=0.65
    )
    assert len(attacked) < 2 * len(grid)  # the lazy sweep skipped some points
    assert attacked[-1] == pytest.approx(0.6)  # its attacks may stop below 0.65 - 0.05
    assert any(p.get("robust_complete") is False for p in lazy)
    keys = sweep.ADAPTIVE_KNOBS
    expected = sweep.choose(full, tolerance=0.05, reference=0.65, key=keys)
    assert sweep.choose(lazy, tolerance=0.05, reference=0.65, key=keys) == expected
    skipped = [p for p in lazy if p["robust_acc"] is None]
    assert skipped and all(p["clean_acc"] < expected["clean_acc"] for p in skipped)


def fake_fixed_sweep(monkeypatch, *, clean, robust, n=40, attacked=None):
    """Replace the fixed sweep's two measurements by `clean(alpha, s_h)` and
    `robust(alpha, s_h, give_up_below)`; returns the sweep's images."""

    def fake_robust_accuracy(model, *args, give_up_below=None, **kwargs):
        if attacked is not None:
            attacked.append(give_up_below)
        return robust(float(model.alpha), model.temperature_rob, give_up_below)

    monkeypatch.setattr(
        sweep,
        "clean_accuracy_at",
        lambda *args, alpha, temperature_std, temperature_rob: clean(alpha, temperature_rob),
    )
    monkeypatch.setattr(sweep, "robust_accuracy", fake_robust_accuracy)
    x = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(n))
    return x, torch.zeros(n, dtype=torch.long)


def test_the_lazy_fixed_sweep_chooses_what_attacking_every_point_would(monkeypatch):
    def robust(alpha, s_h, give_up_below):  # alpha up: robust
        acc = round(0.2 + 0.5 * alpha - 0.01 * s_h, 3)
        if give_up_below is not None and acc < give_up_below:
            return sweep.Robustness(acc + 0.001, 0.0, complete=False)
        return sweep.Robustness(acc, 0.0)

    attacked: list = []
    images = fake_fixed_sweep(
        monkeypatch,
        clean=lambda alpha, s_h: round(0.95 - 0.1 * alpha - 0.01 * s_h, 4),  # alpha up: less
        robust=robust,
        attacked=attacked,
    )
    settings = SweepSettings(
        subset=10,
        alphas=(0.0, 0.5, 0.7, 0.8, 0.9, 1.0),
        temperatures_rob=(0.5, 1.0),
        tolerance=0.05,
    )
    args = {"images": images, "eps": 0.1, "settings": settings}
    full = sweep.alpha_sweep(toy_base(0), toy_base(1), **args)
    attacked.clear()
    lazy = sweep.alpha_sweep(toy_base(0), toy_base(1), **args, reference=0.69)
    assert len(attacked) < len(full) and attacked[0] == pytest.approx(0.64)
    assert any(p["robust_complete"] is False for p in lazy)
    keys = sweep.FIXED_KNOBS
    expected = sweep.choose(full, tolerance=0.05, reference=0.69, key=keys)
    assert (expected["alpha"], expected["temperature_rob"]) == (0.9, 0.5)  # 0.645 >= 0.64
    assert sweep.choose(lazy, tolerance=0.05, reference=0.69, key=keys) == expected
    skipped = [p for p in lazy if p["robust_acc"] is None]
    assert skipped and all(p["clean_acc"] < expected["clean_acc"] for p in skipped)


def test_with_no_point_admitted_the_lazy_sweep_still_finds_the_most_robust(monkeypatch):
    def robust(alpha, s_h, give_up_below):
        if give_up_below is not None:  # stopped early: bounds that rank the points backwards
            return sweep.Robustness(give_up_below - 0.01 * alpha, 0.0, False)
        return sweep.Robustness(round(0.2 + 0.3 * alpha, 3), 0.0)  # far below any floor here

    images = fake_fixed_sweep(
        monkeypatch, clean=lambda alpha, s_h: round(0.95 - 0.1 * alpha, 4), robust=robust, n=20
    )
    settings = SweepSettings(subset=10, alphas=(0.0, 0.5, 0.8, 1.0), tolerance=0.05)
    args = {"images": images, "eps": 0.1, "settings": settings}
    full = sweep.alpha_sweep(toy_base(0), toy_base(1), **args)
    lazy = sweep.alpha_sweep(toy_base(0), toy_base(1), **args, reference=0.9)
    keys = sweep.FIXED_KNOBS
    expected = sweep.choose(full, tolerance=0.05, reference=0.9, key=keys)
    assert expected["alpha"] == 1.0  # nothing within 0.05 of 0.9: the most robust point
    chosen = sweep.choose(lazy, tolerance=0.05, reference=0.9, key=keys)
    assert chosen == expected and chosen["robust_complete"] is True


def test_a_sweeps_store_keeps_the_reference_and_a_bound_below_a_new_floor_is_attacked_again(
    tmp_path,
):
    store = PointStore(tmp_path / "points.json", {"eps": 0.1})
    store.record_reference(0.72)
    store.record({"alpha": 0.9, "robust_acc": 0.66, "seconds": 1.0, "robust_complete": False})
    again = PointStore(tmp_path / "points.json", {"eps": 0.1})
    assert again.reference == 0.72 and next(iter(again.done.values())).complete is False
    assert PointStore(tmp_path / "points.json", {"eps": 0.2}).reference is None

    attacked = []

    def attack(point, floor):  # fully attacked (floor None): exact; else stopped, a bound
        attacked.append(floor)
        return sweep.Robustness(0.61, 2.0, complete=floor is None)

    sweep.attack_in_order([{"alpha": 0.9, "clean_acc": 0.9}], attack, floor=0.7, done=again.done)
    assert attacked == [None]  # the kept bound stays below 0.7; none admitted: settled fully
    attacked.clear()
    sweep.attack_in_order([{"alpha": 0.9, "clean_acc": 0.9}], attack, floor=0.65, done=again.done)
    assert attacked[0] == 0.65  # a bound of 0.66 could reach 0.65: attacked again
    attacked.clear()
    points = [{"alpha": 0.9, "clean_acc": 0.9}]
    sweep.attack_in_order(points, attack, floor=None, done=again.done)
    assert attacked == [None] and points[0]["robust_complete"]  # no floor: no bound is kept


def test_stale_stages_are_retired_with_everything_built_on_them(tmp_path):
    cfg = load_config(PipelineConfig, ROOT / "configs/robust/demo_mnist.yaml", [])
    work = tmp_path / "work"
    split = pipeline.split_settings(cfg.standard)
    stages = {
        "standard": {"data": {"name": "mnist"}},  # trained before the hold-out existed
        "robust": {"data": split},
        "fixed-mix": {"selection": {}},
        "eval-fixed-mix": {},
        "eval-robust": {},
    }
    for name, summary in stages.items():
        (work / name).mkdir(parents=True)
        (work / name / "summary.json").write_text(json.dumps({"status": "finished", **summary}))
    pipeline._retire_stale(cfg, work, log=lambda _: None)
    assert sorted(p.name for p in work.iterdir()) == ["retired", "robust"]
    retired = {p.name for batch in (work / "retired").iterdir() for p in batch.iterdir()}
    assert retired == set(stages) - {"robust"}


@pytest.mark.parametrize(
    ("change", "retired"),
    [
        ({}, {"eval-adaptive-mix"}),  # the gate grid only: the trained network is kept
        ({"eps": 0.2}, {"adaptive-mix", "eval-adaptive-mix"}),  # and the budget: trained anew
    ],
)
def test_a_changed_gate_grid_keeps_the_mixing_network_only_if_nothing_else_changed(
    tmp_path, change, retired
):
    cfg = load_config(PipelineConfig, ROOT / "configs/robust/demo_mnist.yaml", ["adaptive=true"])
    work = tmp_path / "work"
    for name in ("standard", "robust"):
        (work / name).mkdir(parents=True)
        summary = {"status": "finished", "data": pipeline.split_settings(cfg.standard)}
        (work / name / "summary.json").write_text(json.dumps(summary))
    mix = pipeline.mix_config(cfg, work, "adaptive")
    stage = work / "adaptive-mix"
    stage.mkdir()
    (stage / "config.yaml").write_text(json.dumps(mix.model_dump(mode="json")))
    settings = {"sweep": cfg.sweep.model_dump(mode="json"), "mixnet": {}}  # grid since changed
    summary = {"status": "finished", "eps": mix.eps, "selection": {"rule": "r"}}
    (stage / "summary.json").write_text(json.dumps({**summary, "settings": settings}))
    (work / "eval-adaptive-mix").mkdir()

    eval_settings = cfg.eval.model_copy(update=change)
    ranges = ((0.0, 1.0), (0.9, 1.0))
    new = cfg.model_copy(
        update={
            "mixnet": cfg.mixnet.model_copy(update={"alpha_ranges": ranges}),
            "eval": eval_settings,
        }
    )
    pipeline._retire_stale(new, work, log=lambda _: None)

    moved = {p.name for batch in (work / "retired").iterdir() for p in batch.iterdir()}
    assert moved == retired


@pytest.mark.parametrize(("recorded", "kept"), [("default", True), ("other", False)])
def test_a_fixed_mix_is_kept_when_its_recorded_sweep_lacks_only_a_default(tmp_path, recorded, kept):
    cfg = load_config(PipelineConfig, ROOT / "configs/robust/demo_mnist.yaml", [])
    work = tmp_path / "work"
    for name in ("standard", "robust"):
        (work / name).mkdir(parents=True)
        summary = {"status": "finished", "data": pipeline.split_settings(cfg.standard)}
        (work / name / "summary.json").write_text(json.dumps(summary))
    sweep_settings = cfg.sweep.model_dump(mode="json")
    del sweep_settings["clean_subset"]  # as if recorded before the setting existed
    if recorded == "other":
        sweep_settings["tolerance"] = cfg.sweep.tolerance + 0.01
    summary = {
        "status": "finished",
        "eps": cfg.eval.eps,
        "selection": {"rule": admission_rule(cfg.sweep.tolerance)},
        "settings": {"sweep": sweep_settings},
    }
    (work / "fixed-mix").mkdir()
    (work / "fixed-mix" / "summary.json").write_text(json.dumps(summary))

    pipeline._retire_stale(cfg, work, log=lambda _: None)

    assert (work / "fixed-mix").is_dir() == kept


def test_an_unfinished_base_begun_with_another_hold_out_is_retired(tmp_path):
    cfg = load_config(PipelineConfig, ROOT / "configs/robust/demo_mnist.yaml", [])
    work = tmp_path / "work"
    for name, validation in (("standard", 0.25), ("robust", cfg.robust.data.validation)):
        train = cfg.standard if name == "standard" else cfg.robust
        (work / name / "checkpoints").mkdir(parents=True)  # killed mid-training
        tree = train.model_dump(mode="json")
        tree["data"]["validation"] = validation
        (work / name / "config.yaml").write_text(json.dumps(tree))  # JSON is YAML

    pipeline._retire_stale(cfg, work, log=lambda _: None)

    # the other hold-out may have trained on today's validation images: it starts again
    assert not (work / "standard").exists()
    assert (work / "robust" / "checkpoints").is_dir()  # same hold-out: it resumes


def test_an_interrupted_sweep_attacks_none_of_its_kept_points_again(tmp_path, monkeypatch):
    x = torch.rand(30, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    y = toy_base(0)(x).argmax(1)
    attacked = []

    def fake_robust_accuracy(model, *args, **kwargs):
        attacked.append(1)
        return sweep.Robustness(round(0.3 + float(model.alpha) / 2, 3), 1.0)

    monkeypatch.setattr(sweep, "robust_accuracy", fake_robust_accuracy)
    settings = SweepSettings(subset=10, alphas=(0.0, 0.5, 0.8, 1.0), temperatures_rob=(1.0, 2.0))
    signature = {"sweep": settings.model_dump(mode="json"), "eps": 0.1}
    store = PointStore(tmp_path / "points.json", signature)
    killed_after = 3

    def record_then_stop(point):
        store.record(point)
        if len(store.done) == killed_after:
            raise KeyboardInterrupt  # as a stop would

    sweep_args = {"images": (x, y), "eps": 0.1, "settings": settings}
    with pytest.raises(KeyboardInterrupt):
        sweep.alpha_sweep(toy_base(0), toy_base(1), **sweep_args, on_point=record_then_stop)
    attacked.clear()
    again = PointStore(tmp_path / "points.json", signature)
    resumed = sweep.alpha_sweep(toy_base(0), toy_base(1), **sweep_args, done=again.done)
    full = sweep.alpha_sweep(toy_base(0), toy_base(1), **sweep_args)
    assert len(attacked) == 2 * len(full) - killed_after  # the resumed sweep skipped 3
    assert resumed == full
    changed = PointStore(tmp_path / "points.json", {**signature, "eps": 0.2})
    assert changed.done == {}  # other settings: every point is attacked again
