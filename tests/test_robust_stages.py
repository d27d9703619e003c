"""The robust pipeline's stages: a stage no longer current is retired with everything built on
it, and a stage that still is (a mixing network, a fixed mix, attacked points) is kept."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from robust_toys import toy_base

import trustvision.robust.commands.demo as pipeline
import trustvision.robust.sweep as sweep
from trustvision.config import load_config
from trustvision.robust.commands.common import PointStore, admission_rule
from trustvision.robust.config import PipelineConfig, SweepSettings

ROOT = Path(__file__).parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_kept_points_from_other_threads_are_reused_with_a_warning(tmp_path):
    path, here = tmp_path / "points.json", {"processes": 1, "threads": torch.get_num_threads()}
    store = PointStore(path, {"eps": 0.1})
    store.record({"alpha": 0.5, "robust_acc": 0.4, "seconds": 1.0})
    saved = json.loads(path.read_text())
    assert saved["computed_by"] == [here]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(PointStore(path, {"eps": 0.1}).done) == 1  # no warning
    other = {**here, "threads": here["threads"] + 1}
    path.write_text(json.dumps({**saved, "computed_by": other}))  # an older file's one record
    with pytest.warns(UserWarning, match=r"numbers now differ from an uninterrupted run's"):
        again = PointStore(path, {"eps": 0.1})
    again.record({"alpha": 0.8, "robust_acc": 0.3, "seconds": 1.0})
    assert json.loads(path.read_text())["computed_by"] == [other, here]
    with pytest.warns(UserWarning, match=r"numbers now differ"):  # still a mix of both
        assert len(PointStore(path, {"eps": 0.1}).done) == 2
    for damaged in (None, "x", [1, 2]):
        path.write_text(json.dumps({**saved, "computed_by": damaged}))
        assert len(PointStore(path, {"eps": 0.1}).done) == 1
    path.write_text("[1, 2]")  # not the store's shape at all: started afresh
    assert PointStore(path, {"eps": 0.1}).done == {}
