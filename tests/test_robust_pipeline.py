"""The whole robust pipeline on a sliver of MNIST: every stage, every file, and resuming."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from benchmark_scripts import benchmark
from robust_pipeline_run import NoTestImages, benchmark_report, mixes_without_test_images, tiny

import trustvision.robust.commands.common as common
import trustvision.robust.commands.demo as pipeline
import trustvision.robust.evaluate as evaluate
import trustvision.train.loop as loop
from trustvision.robust.card import MODEL_INFO_FIELDS
from trustvision.robust.certify import SMOOTHING_LIPSCHITZ
from trustvision.robust.commands.adaptive import chooses_gate_again, pixel_loader
from trustvision.robust.commands.certify import run_certify
from trustvision.robust.config import CertifyConfig
from trustvision.robust.mixing import MixingNetwork, stage_channels
from trustvision.robust.runs import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread):
    """One run of the whole pipeline, whose mixes cannot read a test image, shared by the tests
    below: (its runs folder, its work directory, its report)."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    work = tmp_path / "work"
    with pytest.MonkeyPatch.context() as monkeypatch:
        mixes_without_test_images(monkeypatch)
        report = pipeline.run_pipeline(tiny(tmp_path), work, log=lambda _: None)
    return tmp_path, work, report


def test_pipeline_chooses_every_knob_on_validation_images(finished):
    _, work, report = finished
    assert [r["model"] for r in report["rows"]] == [
        "standard",
        "robust",
        "fixed mix",
        "adaptive mix",
    ]
    assert report["alpha"] in (0.0, 0.5, 1.0)
    # every knob was chosen on validation images (a single candidate is kept, not chosen)
    fixed, adaptive = report["selection"]["fixed mix"], report["selection"]["adaptive mix"]
    assert fixed["selected_by"] == "validation" and adaptive["selected_by"] == "validation"
    assert fixed["knobs"]["alpha"]["selected_by"] == "validation"
    assert adaptive["knobs"]["gamma_bias"]["selected_by"] == "validation"
    assert adaptive["knobs"]["temperature_rob"]["selected_by"] == "validation"
    assert adaptive["knobs"]["temperature_std"]["selected_by"] == "config"
    assert len(report["sweep"]) == 5 and len(adaptive["points"]) == 4  # alpha 0 ignores s_h
    standard = json.loads((work / "standard" / "summary.json").read_text())
    held = standard["data"]["validation_images"]
    assert held > 0 and standard["data"]["train_images"] + held == 384
    assert fixed["validation_images"]["held_out"] == held
    assert fixed["validation_images"]["images_clean"] == held  # `clean_subset` null: all
    assert fixed["validation_images"]["images_attacked"] == 12
    assert report["adaptive"]["mixnet_train_images"] == 128
    assert "val_acc" in report["adaptive"]["history"][0]
    collected = {**report, "measured_by": {"command": "python benchmarks/robust.py"}}
    sections = benchmark_report().dataset_section("mnist", collected, {"tradeoff": "t.png"})
    text = "\n".join(sections)
    assert f"| alpha | {report['alpha']:g} | validation | 0, 0.5, 1 |" in text
    assert "| gamma_bias |" in text and "Test images were not read" in text
    low, high = (
        min(report["rows"][0]["attacked_per_class"]),
        max(report["rows"][0]["attacked_per_class"]),
    )
    assert f"The 12 attacked test images hold {low} to {high} images of each of the 10" in text


def test_pipeline_writes_every_result(finished):
    _, work, report = finished
    assert set(report["goal"]) == {"fixed mix", "adaptive mix"}
    for row in report["rows"]:
        assert row["n_autoattack"] == 12 and 0 <= row["autoattack_acc"] <= 1
        assert abs(row["autoattack_acc"] * 12 - round(row["autoattack_acc"] * 12)) < 1e-9
        assert sum(row["attacked_per_class"]) == 12 and len(row["attacked_per_class"]) == 10
        assert {c["name"] for c in row["checks"]} == {
            "autoattack<=pgd",
            "eps->large",
            "square<=white-box",
        }
    adaptive_attacks = report["rows"][3]["seconds"]
    assert "adaptive-apgd-ce" in adaptive_attacks and "adaptive-apgd-t" in adaptive_attacks
    for name in ("standard", "robust", "fixed-mix", "adaptive-mix"):
        info = json.loads((work / f"eval-{name}" / "model_info.json").read_text())
        assert list(info) == list(MODEL_INFO_FIELDS) and info["eps"] == "0.3"
        assert info["number_forward_passes"] == (2 if "mix" in name else 1)
    assert (work / "tradeoff.png").is_file()
    assert (work / "certify" / "plots" / "certified.png").is_file()
    assert report["certify"]["attack_check"]["flips"] == 0
    assert report["certify"]["lipschitz_constant"] == SMOOTHING_LIPSCHITZ  # what a reuse checks
    assert isinstance(load_model(work / "adaptive-mix")(torch.rand(2, 1, 28, 28)), torch.Tensor)
    assert json.loads((work / "report.json").read_text())["alpha"] == report["alpha"]


def test_certify_takes_the_lipschitz_route_with_a_known_bound(finished, monkeypatch):
    """`robust certify` by a (made-up) known Lipschitz bound, on the pipeline's bases, named
    relative to the working directory."""
    tmp_path, work, _ = finished
    monkeypatch.chdir(work)
    lipschitz = CertifyConfig(
        standard="standard",
        robust="robust",
        runs_dir=str(tmp_path),
        device="cpu",
        certify={"method": "lipschitz", "lipschitz": 0.5, "subset": 8, "alphas": (1.0, 0.9)},
    )
    summary = run_certify(lipschitz).read_summary()
    assert summary["method"] == "lipschitz" and set(summary["curves"]) == {"1", "0.9"}
    assert summary["robust"] == str((work / "robust").resolve())  # loads from any directory
    assert summary["curves"]["1"]["tight"][0] >= summary["curves"]["0.9"]["tight"][0]


def test_a_second_pipeline_run_redoes_no_finished_stage(finished, monkeypatch):
    """It finds every stage finished and recomputes nothing but the report, unless a stage's
    results are out of date."""
    tmp_path, work, report = finished

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for target, name in (
        (pipeline, "train_robust"),
        (pipeline, "run_mix"),
        (pipeline, "run_eval"),
        (pipeline, "run_certify"),
    ):
        monkeypatch.setattr(target, name, forbidden)
    again = pipeline.run_pipeline(tiny(tmp_path), work, log=lambda _: None)
    assert again["rows"] == report["rows"]
    # but a smoothing certification without today's Lipschitz constant (before 2026-11-29) is
    path = work / "certify" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "lipschitz_constant": None}))
    monkeypatch.setattr(pipeline, "run_certify", run_certify)
    pipeline.run_pipeline(tiny(tmp_path), work, log=lambda _: None)
    assert json.loads(path.read_text())["lipschitz_constant"] == SMOOTHING_LIPSCHITZ
    (batch,) = (work / "retired").iterdir()
    assert [p.name for p in batch.iterdir()] == ["certify"]
    shutil.rmtree(work / "retired")  # `finished` as the tests below expect it


def test_evaluations_made_on_another_order_of_the_test_images_are_made_again(finished, monkeypatch):
    """An older data cache held CIFAR-10's test split class by class, so "the first 500 test
    images" were all airplanes: an evaluation or certificate made on another order is redone,
    also a certificate whose config named its bases otherwise (relative to where it ran)."""
    tmp_path, work, _ = finished
    certify_config = work / "certify" / "config.yaml"
    text = certify_config.read_text()
    certify_config.write_text(text.replace(f"standard: {work}/", "standard: work/"))
    for name in ("train_robust", "run_mix"):
        monkeypatch.setattr(pipeline, name, lambda *a, **k: pytest.fail("a base or mix redone"))
    redone = []
    for name in ("run_eval", "run_certify"):
        real = getattr(pipeline, name)
        monkeypatch.setattr(
            pipeline, name, lambda *a, real=real, **k: redone.append(a[0].name) or real(*a, **k)
        )
    true_dataset = pipeline.recorded_dataset
    monkeypatch.setattr(
        pipeline,
        "recorded_dataset",
        lambda data: replace(true_dataset(data), test_sha256="another order"),
    )
    pipeline.run_pipeline(tiny(tmp_path), work, log=lambda _: None)
    stages = ["eval-standard", "eval-robust", "eval-fixed-mix", "eval-adaptive-mix", "certify"]
    assert redone == stages
    (batch,) = (work / "retired").iterdir()
    assert [p.name for p in batch.iterdir()] == ["certify"]  # the old one, kept aside
    shutil.rmtree(work / "retired")  # `finished` as the tests below expect it
    monkeypatch.setattr(pipeline, "recorded_dataset", true_dataset)
    redone.clear()
    pipeline.run_pipeline(tiny(tmp_path), work, log=lambda _: None)
    assert redone == []  # the evaluations just made recorded the true order


def test_the_gate_check_chooses_the_recipe_that_separates_most_and_its_network_can_be_kept(
    finished, monkeypatch
):
    """benchmarks/robust_gate_check.py on the pipeline's bases: a network per candidate, read
    on validation images only; each differs from the pipeline's mix only in what is chosen
    after training (and its settings), so an adopted one is kept."""
    tmp_path, work, _ = finished
    gate_check = benchmark("robust_gate_check")
    mixes_without_test_images(monkeypatch, caller=gate_check)
    cfg = tiny(tmp_path)
    configured = f"bce_weight_max={cfg.mixnet.bce_weight_max:g}"
    candidates = [[configured], ["bce_weight_max=0.9", f"epochs={cfg.mixnet.epochs + 1}"]]
    rows = gate_check.check("mnist", cfg, work, candidates)
    assert [r["settings"] for r in rows] == candidates
    assert [r["configured"] for r in rows] == [True, False]
    assert [Path(r["run"]).name for r in rows] == [
        configured,
        f"bce_weight_max=0.9+epochs={cfg.mixnet.epochs + 1}",
    ]
    for row, candidate in zip(rows, candidates, strict=True):
        assert row["separation"] == row["alpha_attacked"] - row["alpha_clean"]
        recipe = cfg.model_copy(
            update={
                "mixnet": gate_check.candidate_mixnet(cfg, candidate).model_copy(
                    update={"bias_sweep": cfg.mixnet.bias_sweep}
                )
            }
        )
        assert chooses_gate_again(row["run"], pipeline.mix_config(recipe, work, "adaptive"))
    history = json.loads((Path(rows[1]["run"]) / "summary.json").read_text())["history"]
    assert len(history) == cfg.mixnet.epochs + 1  # it trained with its own settings
    logged = (Path(rows[1]["run"]) / "metrics.jsonl").read_text()
    assert "val_acc" in history[-1] and "test_" not in logged  # it never read a test image
    earlier = {"candidate": "steps_df=5", "separation": 2.0}  # checked before; its run is gone
    previous = {"candidates": [earlier, {**rows[0], "separation": -1.0}]}
    record = gate_check.merged(previous, rows, cfg)
    # this check's rows replace their old ones; an earlier row without its full settings cannot
    # say whether it is the config's network
    assert record["candidates"] == [*rows, earlier | {"earlier": True, "configured": None}]
    assert record["chosen"] == "steps_df=5"
    best = max(rows, key=lambda r: r["separation"])  # chosen only if its gate separates
    expected = best["candidate"] if best["separation"] > 0 else None
    assert gate_check.merged(None, rows, cfg)["chosen"] == expected
    renamed = gate_check.merged({"candidates": [rows[0] | {"candidate": "x"}]}, rows[1:], cfg)
    assert renamed["candidates"][1]["configured"] is True  # judged by its recorded settings
    assert not gate_check.adopt(tmp_path / "w", tmp_path / "gone/gate-check/x", cfg, candidates[0])
    other = tmp_path / "other-work"
    run = [Path(r["run"]) for r in rows]
    assert not gate_check.adopt(other, run[1], cfg, candidates[1])  # the config holds another
    assert not (other / "adaptive-mix").exists()
    assert gate_check.adopt(other, run[0], cfg, candidates[0])
    assert (other / "adaptive-mix" / "summary.json").is_file()
    assert not gate_check.adopt(other, run[0], cfg, candidates[0])  # never replaced


def test_the_gate_probe_trains_a_detector_on_the_bases_maps_of_validation_images_only(
    finished, monkeypatch
):
    """benchmarks/robust_gate_probe.py: attacked copies, and a detector per stage pair scored
    every epoch on validation images; the test split cannot be read."""
    _, work, _ = finished
    probe = benchmark("robust_gate_probe")
    monkeypatch.setattr(
        common,
        "recorded_dataset",
        lambda data: replace(evaluate.recorded_dataset(data), test=NoTestImages()),
    )
    argv = ["--train-images", "64", "--val-images", "32", "--steps", "3", "--epochs", "2"]
    args = probe.parse_args([*argv, "--stages", "0,1", "--reads", "both", "robust"])
    record = probe.probe("mnist", tiny(work.parent), work, args)
    acc = record["mix_accuracy"]
    assert acc["train"]["images"] == 64 and acc["validation"]["images"] == 32
    assert acc["validation"]["attacked"] <= acc["validation"]["clean"]  # (untrained tiny bases)
    detector, robust_only = record["detectors"]
    assert detector["stages"] == [0, 1] and len(detector["history"]) == 2
    assert (detector["reads"], robust_only["reads"]) == ("both", "robust")
    seen = detector["seen"]
    assert 0.0 <= seen["auc"] <= 1.0 and 0.0 <= seen["gated_mix_attacked"] <= 1.0
    # the clean images are the same; only the attacked copies differ from the blind ones
    assert seen["score_clean"] == pytest.approx(detector["final"]["score_clean"])
    assert all(
        0.0 <= row["auc"] <= 1.0 and 0.0 <= row["youden"] <= 1.0 for row in detector["history"]
    )
    assert {"score_clean", "score_attacked", "score_noise", "auc_noise"} <= set(detector["final"])
    table = probe.markdown({"mnist": record}, work.parent)
    assert f"| 0,1 | both | {detector['final']['score_clean']:.3f} |" in table
    assert f"| 0,1 | robust | {robust_only['final']['score_clean']:.3f} |" in table
    assert any(row["auc"] != 0.5 for row in detector["history"])  # attacked maps differ
    assert detector["best"]["auc"] == max(row["auc"] for row in detector["history"])


def test_a_new_gate_grid_keeps_the_trained_mixing_network_and_its_attacked_points(
    finished, monkeypatch
):
    """The last test on `finished`: it widens the adaptive mix's gate grid. The mix chooses
    its gate again from the network it trained, the points already attacked are kept, and of
    the other stages only the adaptive mix's evaluation is redone."""
    tmp_path, work, _ = finished
    stage = work / "adaptive-mix"
    before = json.loads((stage / "summary.json").read_text())
    attacked_before = json.loads((stage / common.POINTS).read_text())["points"]

    def forbidden(*args, **kwargs):
        raise AssertionError("a base or the mixing network trained again")

    monkeypatch.setattr(pipeline, "train_robust", forbidden)
    monkeypatch.setattr(loop, "train_epoch", forbidden)
    cfg = tiny(tmp_path)
    ranges = ((0.0, 1.0), (0.5, 1.0))
    cfg = cfg.model_copy(update={"mixnet": cfg.mixnet.model_copy(update={"alpha_ranges": ranges})})
    pipeline.run_pipeline(cfg, work, log=lambda _: None)

    after = json.loads((stage / "summary.json").read_text())
    assert after["history"] == before["history"]
    assert after["selection"]["knobs"]["alpha_range"]["grid"] == [list(r) for r in ranges]
    attacked_after = json.loads((stage / common.POINTS).read_text())["points"]
    assert attacked_before  # kept, each with its measured seconds: none was attacked again
    assert {k: attacked_after[k] for k in attacked_before} == attacked_before
    retired = {p.name for batch in (work / "retired").iterdir() for p in batch.iterdir()}
    assert retired == {"eval-adaptive-mix"}
    assert (work / "eval-adaptive-mix" / "summary.json").is_file()


def test_the_probes_attack_that_sees_the_detector_drives_its_score_down(finished):
    """With all weight on BCE(gamma, 1), the attack can only work through the detector: it
    must lower the detector's output on the attacked copies."""
    _, work, _ = finished
    detect = benchmark("robust_gate_probe_detect")
    inputs = common.mix_inputs(
        pipeline.mix_config(tiny(work.parent), work, "adaptive"), torch.device("cpu")
    )
    shape = inputs.dataset.image_shape
    std, rob = stage_channels(inputs.standard, shape), stage_channels(inputs.robust, shape)
    torch.manual_seed(0)
    net = MixingNetwork(low_channels=std[0] + rob[0], high_channels=std[1] + rob[1], width=8)
    detector = detect.Detector(net, (0, 1), "both")
    indices = evaluate.validation_indices(inputs.dataset.train.labels, inputs.bases)[:32]
    loader = pixel_loader(inputs.dataset, indices, batch_size=16, device=torch.device("cpu"))
    stage_maps = benchmark("robust_gate_probe").stage_maps
    maps = [stage_maps(inputs, x, {0, 1}) for x, _ in loader.epoch(0)]
    clean = detect.gammas(detector, maps)
    seen = detect.seen_attack_scores(inputs, detector, loader, clean, steps=3, weight=1.0, seed=0)
    assert seen["weight"] == 1.0
    assert seen["score_attacked"] < seen["score_clean"] and seen["auc"] < 0.5


def test_the_robust_report_collects_only_reports_that_name_their_measuring_invocation(
    finished, tmp_path, capsys
):
    """A work directory's report is collected once benchmarks/robust.py recorded the command
    that wrote it and the commits its (perhaps reused) stages ran at, which the docs then
    cite; one without them is left out, and says why."""
    _, work, _ = finished
    robust = benchmark("robust")
    path = tmp_path / "work" / "mnist" / "report.json"
    path.parent.mkdir(parents=True)
    shutil.copyfile(work / "report.json", path)  # (earlier tests may have rewritten it)
    rows = json.loads(path.read_text())["rows"]
    for stage, commit in (
        ("standard", "aaaaaaa1"),
        ("robust", "aaaaaaa1"),
        ("certify", "bbbbbbb2"),
    ):
        (path.parent / stage).mkdir()
        summary = {"environment": {"git_commit": commit}}
        (path.parent / stage / "summary.json").write_text(json.dumps(summary))
    assert robust.collected(tmp_path / "work") == {}
    assert "names no invocation that measured it" in capsys.readouterr().out
    robust.stamp_measured_by(path, {"git_commit": "0123abc"}, ["--datasets", "mnist"])
    collected = robust.collected(tmp_path / "work")["mnist"]
    command = "python benchmarks/robust.py --datasets mnist"
    assert collected["measured_by"] == {
        "command": command,
        "git_commit": "0123abc",
        "stage_commits": {"certify": "bbbbbbb2", "robust": "aaaaaaa1", "standard": "aaaaaaa1"},
    }
    assert collected["rows"] == rows
    line = benchmark_report().measured_line(collected)
    assert f"`{command}`" in line and "0123abc" in line and "Kept" not in line
    assert "bbbbbbb: certify" in line and "aaaaaaa: robust, standard" in line


def test_evaluations_and_certificates_made_with_other_settings_are_made_again(
    finished, monkeypatch
):
    """A finished evaluation or certificate is current only under the settings it was made
    with: another PGD step count or Monte Carlo n redoes them, while the bases and the
    smoothing base (their configs unchanged) stay. (Last in the file: it leaves `finished`
    made under the new settings; a test above left its adaptive mix under another gate grid.)"""
    tmp_path, work, _ = finished
    monkeypatch.setattr(pipeline, "train_robust", lambda *a, **k: pytest.fail("a base redone"))
    redone = []
    for name in ("run_eval", "run_certify"):
        real = getattr(pipeline, name)
        monkeypatch.setattr(
            pipeline, name, lambda *a, real=real, **k: redone.append(a[0].name) or real(*a, **k)
        )
    cfg = tiny(tmp_path)
    cfg = cfg.model_copy(
        update={
            "eval": cfg.eval.model_copy(update={"pgd_steps": 2}),
            "certify": cfg.certify.model_copy(update={"n": 30}),
        }
    )
    pipeline.run_pipeline(cfg, work, log=lambda _: None)
    stages = ["eval-standard", "eval-robust", "eval-fixed-mix", "eval-adaptive-mix", "certify"]
    assert redone == stages
    certified = yaml.safe_load((work / "certify" / "config.yaml").read_text())
    assert certified["certify"]["n"] == 30
    evaluated = yaml.safe_load((work / "eval-robust" / "config.yaml").read_text())
    assert evaluated["eval"]["pgd_steps"] == 2
    # without the adaptive mix, the one left in `work` is not reported as this run's
    fixed_only = pipeline.run_pipeline(cfg.model_copy(update={"adaptive": False}), work, log=print)
    assert list(fixed_only["selection"]) == ["fixed mix"]
    assert [r["model"] for r in fixed_only["rows"]] == ["standard", "robust", "fixed mix"]
