"""The robust pipeline's parts that need no full run: evaluation chunks and their resume, the
CLI, refusals before training, the gate probe's and gate check's pieces, the report's kept
data sets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmark_scripts import benchmark
from robust_pipeline_run import DEMO, tiny
from typer.testing import CliRunner

import trustvision.robust.commands.demo as pipeline
import trustvision.robust.commands.eval as eval_command
import trustvision.robust.evaluate as evaluate
from trustvision.config import load_config
from trustvision.errors import ConfigError
from trustvision.robust.autoattack import attack_chunk
from trustvision.robust.cli import robust_app
from trustvision.robust.config import EvalConfig, PipelineConfig

ROOT = Path(__file__).parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_probe_auc_counts_attacked_images_scored_above_clean_ones():
    auc = benchmark("robust_gate_probe_detect").auc
    assert auc(torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9])) == 1.0
    assert auc(torch.tensor([0.8, 0.9]), torch.tensor([0.1, 0.2])) == 0.0
    assert auc(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])) == 0.5  # ties count half
    assert auc(torch.tensor([0.1, 0.6]), torch.tensor([0.5, 0.9])) == 0.75
    youden = benchmark("robust_gate_probe_detect").youden
    assert youden(torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9])) == 1.0
    assert youden(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])) == 0.0
    assert youden(torch.tensor([0.1, 0.6]), torch.tensor([0.5, 0.9])) == 0.5


def test_the_fixed_curve_a_gate_is_compared_with_takes_stopped_points_at_their_bound():
    fixed_clean_at = benchmark("robust_report_mixes").fixed_clean_at

    def point(alpha, clean, robust, complete=True):
        return {
            "alpha": alpha,
            "clean_acc": clean,
            "robust_acc": robust,
            "robust_complete": complete,
        }

    ends = [point(0.0, 0.85, 0.0), point(1.0, 0.70, 0.30)]
    sweep = [*ends, point(0.95, 0.73, 0.275), point(0.9, 0.77, 0.26, complete=False)]
    # Two thirds of the way from the 0.9 point, at its bound (0.26), to the 0.95 point.
    assert fixed_clean_at(sweep, 0.27) == pytest.approx(0.77 - 0.04 * 2 / 3)
    # Without the stopped point the only bracket is alpha 0 to 0.95, a lower curve.
    assert fixed_clean_at([*ends, sweep[2]], 0.27) == pytest.approx(0.85 - 0.12 * 0.27 / 0.275)
    assert fixed_clean_at([*ends, point(0.95, 0.73, None)], 0.31) is None


@pytest.mark.parametrize("stages", ["1,0", "0-1", "0,1,2"])
def test_the_probe_refuses_a_bad_stage_pair_before_any_work(stages, capsys):
    with pytest.raises(SystemExit):
        benchmark("robust_gate_probe").parse_args(["--stages", stages])
    assert "--stages" in capsys.readouterr().err


def test_a_gate_check_candidate_with_an_unknown_setting_is_a_clear_error(tmp_path):
    gate_check = benchmark("robust_gate_check")
    with pytest.raises(ConfigError, match=r"`epoch`: unknown key"):
        gate_check.candidate_mixnet(tiny(tmp_path), ["epoch=5"])


def test_evaluation_resumes_from_its_finished_chunks(tmp_path, monkeypatch):
    work = tmp_path / "work"
    cfg = tiny(tmp_path).model_copy(update={"adaptive": False, "smoothing": None})
    pipeline.run_pipeline(cfg, work, log=lambda _: None)
    eval_dir = work / "eval-robust"
    first = json.loads((eval_dir / "summary.json").read_text())
    (eval_dir / "summary.json").unlink()  # as if killed after the last chunk

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished chunk was attacked again")

    monkeypatch.setattr(evaluate, "attack_chunk", forbidden)
    state = json.loads((eval_dir / eval_command.STATE).read_text())
    here = {"processes": 1, "threads": torch.get_num_threads()}
    assert state["computed_by"] == [here]
    state["computed_by"] = {**here, "threads": here["threads"] + 1}  # an older file's one record
    (eval_dir / eval_command.STATE).write_text(json.dumps(state))
    with pytest.warns(UserWarning, match=r"with \d+ thread\(s\) and resumes in 1 with"):
        pipeline.run_pipeline(cfg, work, log=lambda _: None)
    second = json.loads((eval_dir / "summary.json").read_text())
    assert second["autoattack"]["robust_acc"] == first["autoattack"]["robust_acc"]
    assert (
        eval_command.STATE == "autoattack-chunks.json" and (eval_dir / eval_command.STATE).is_file()
    )
    # another seed draws other random starts: nothing of the first seed's is reused
    attacked = []
    monkeypatch.setattr(
        evaluate, "attack_chunk", lambda *a, **k: attacked.append(1) or attack_chunk(*a, **k)
    )
    reseeded = load_config(EvalConfig, eval_dir / "config.yaml", [f"seed={cfg.seed + 1}"])
    eval_command.run_eval(reseeded, run_path=eval_dir)
    assert attacked


def test_a_damaged_chunk_file_is_reported_and_its_chunks_attacked_again(tmp_path):
    work = tmp_path / "work"
    cfg = tiny(tmp_path).model_copy(update={"adaptive": False, "smoothing": None})
    pipeline.run_pipeline(cfg, work, log=lambda _: None)
    eval_dir = work / "eval-robust"
    first = json.loads((eval_dir / "summary.json").read_text())
    (eval_dir / "summary.json").unlink()
    (eval_dir / eval_command.STATE).write_text('{"signature": {"model": ')  # cut off mid-write
    lines: list[str] = []
    pipeline.run_pipeline(cfg, work, log=lines.append)
    assert any("is damaged" in line and "attacked again" in line for line in lines)
    second = json.loads((eval_dir / "summary.json").read_text())
    assert second["autoattack"]["robust_acc"] == first["autoattack"]["robust_acc"]  # seeded


def test_cli_prints_configs_and_names_a_missing_run(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(robust_app, ["train", "--print-config", "attack.method=trades"])
    assert shown.exit_code == 0 and "method: trades" in shown.output
    missing = tmp_path / "nothing"
    result = runner.invoke(robust_app, ["eval", f"model={missing}", f"runs_dir={tmp_path}"])
    assert result.exit_code == 2
    assert f"`{missing}` is not a finished robust run" in " ".join(result.output.split())
    bad = runner.invoke(robust_app, ["train", "--print-config", "attack.method=magic"])
    assert bad.exit_code == 2


def test_cli_module_imports_without_torch():
    code = "import sys, trustvision.robust.cli; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_pipelines_seed_device_and_threads_reach_every_stage():
    cfg = load_config(PipelineConfig, DEMO, ["seed=3", "device=cpu", "threads=1"])
    for stage in (cfg.standard, cfg.robust):
        assert (stage.seed, stage.device, stage.threads) == (3, "cpu", 1)
    with pytest.raises(ConfigError, match=r"`robust.seed=5` differ.*set them once, at the top"):
        load_config(PipelineConfig, DEMO, ["robust.seed=5"])


def test_bases_on_different_data_sets_are_refused_before_any_training():
    cfg = load_config(PipelineConfig, DEMO, ["robust.data.name=fashion-mnist"])
    with pytest.raises(ConfigError, match=r"fashion-mnist.*must hold out the same.*`data.name`"):
        pipeline.check_same_holdout(cfg)


def test_a_stage_the_bases_lack_is_refused_before_any_training(tmp_path):
    cfg = load_config(PipelineConfig, DEMO, ["adaptive=true", "mixnet.stages=[1,3]"])
    with pytest.raises(ConfigError, match=r"stages \[1, 3\], but they have 2 and 2 stages"):
        pipeline.run_pipeline(cfg, tmp_path / "work")
    assert not (tmp_path / "work").exists()
    pipeline.check_mixnet_stages(cfg.model_copy(update={"adaptive": False}))  # no network: fine


def test_a_probe_keeps_the_detectors_an_earlier_probe_of_the_same_set_up_trained():
    with_earlier = benchmark("robust_gate_probe").with_earlier
    setup = {"seed": 0, "eps": 0.03, "pgd_steps": 10, "width": 32, "epochs": 15}
    setup["mix_accuracy"] = {"train": {"images": 4000}}
    earlier = {**setup, "detectors": [{"stages": [0, 1]}, {"stages": [1, 2]}]}
    now = {**setup, "detectors": [{"stages": [0, 1], "reads": "robust"}, {"stages": [0, 1]}]}
    merged = with_earlier(now, earlier)
    assert merged["detectors"][:2] == now["detectors"]  # trained again: the new one
    assert merged["detectors"][2:] == [{"stages": [1, 2], "earlier": True}]
    other = {**now, "pgd_steps": 20}  # other attacks: nothing earlier is comparable
    assert with_earlier(other, earlier) == other


def test_a_damaged_robust_report_is_a_clear_error_not_a_traceback(tmp_path):
    robust = benchmark("robust")
    assert robust.with_kept({}, tmp_path / "robust.json") == {}
    for text in ('{"datasets": ', "[]", '{"datasets": {"mnist": 3}}'):
        (tmp_path / "robust.json").write_text(text)
        with pytest.raises(ConfigError, match=r"is not a report of benchmarks/robust\.py"):
            robust.with_kept({}, tmp_path / "robust.json")


def test_rewriting_the_robust_report_keeps_a_data_set_whose_runs_are_gone(tmp_path):
    """benchmarks/robust.py --report-only on a machine without the runs: the committed
    Fashion-MNIST numbers stay, marked as kept, with their plots."""
    out = tmp_path / "results"
    out.mkdir()
    for path in (ROOT / "docs/results").glob("robust*"):
        if path.suffix in {".json", ".png"}:
            (out / path.name).write_bytes(path.read_bytes())
    record = json.loads((out / "robust.json").read_text())
    committed = dict(record["datasets"])
    unmeasured = [n for n in benchmark("robust").DATASETS if n not in committed]
    for name in unmeasured[:1]:  # knobs chosen on test images (no `selection`): dropped
        record["datasets"][name] = {"rows": [], "measured_by": {"command": "robust.py"}}
    (out / "robust.json").write_text(json.dumps(record))
    argv = ["--report-only", "--work", str(tmp_path / "no-runs"), "--out", str(out)]
    benchmark("robust").main(argv)
    kept = json.loads((out / "robust.json").read_text())["datasets"]
    assert set(kept) == set(committed)  # the test-chosen numbers were dropped
    for name, report in kept.items():  # where it was measured, also if it was kept before
        measured = report["measured_by"]["command"]
        assert report["kept"] and f"--datasets {name}" in measured
        assert "--report-only" not in measured
    assert kept["fashion-mnist"]["rows"] == committed["fashion-mnist"]["rows"]
    text = (out / "robust.md").read_text()
    assert "Kept from the earlier report" in text
    assert "](robust_fashionmnist_tradeoff.png)" in text


def test_a_certification_with_the_earlier_lipschitz_constant_is_shown_at_half_the_radius():
    """Before 2026-11-29 the Lipschitz radii used twice the right constant, so they were half
    the right ones: the report shows the recorded bound at r/2 as the bound at r."""
    report_module = benchmark("robust_report")
    grid = [0.1 * i for i in range(11)]
    recorded = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    cert = {
        "grid": grid,
        "curves": {"0.9": {"tight": [0.5] * 11, "lipschitz": recorded}},
        "sigma": 0.25,
        "smoothing_clean_acc": 0.9,
        "n": 10,
        "mix_clean_acc": {"0.9": 0.9},
        "attack_check": {"alpha": 0.9, "flips": 0, "attacked": 5},
    }
    report = {"certify": cert, "config": {"certify": {"n": 100, "confidence": 0.001}}}
    radii, curves = report_module.lipschitz_curves(cert)
    assert radii == [grid[0], grid[2], grid[4], grid[6], grid[8], grid[10]]
    assert curves["0.9"] == recorded[:6]  # the bound at 2r is the one recorded at r
    text = "\n".join(report_module.certify_lines(report, None))
    assert "| 0.9 | 90.0 | 50.0 (100.0) | 50.0 (90.0) | 50.0 (80.0) |" in text
    assert "each bound shown at r is the recorded one at r/2" in text
    current = {**cert, "lipschitz_constant": 0.3989}
    assert report_module.lipschitz_curves(current) == (grid, {"0.9": recorded})
    text = "\n".join(report_module.certify_lines({**report, "certify": current}, None))
    assert "| 0.9 | 90.0 | 50.0 (100.0) | 50.0 (80.0) | 50.0 (60.0) |" in text
    assert "recorded one at r/2" not in text


def test_only_a_smoothing_certification_without_todays_constant_is_certified_again():
    from trustvision.robust.certify import SMOOTHING_LIPSCHITZ

    assert not pipeline.todays_lipschitz_constant({"method": "smoothing"})  # before 2026-11-29
    assert pipeline.todays_lipschitz_constant(
        {"method": "smoothing", "lipschitz_constant": SMOOTHING_LIPSCHITZ}
    )
    assert pipeline.todays_lipschitz_constant({"method": "lipschitz"})  # the user's bound


def test_a_crop_wider_than_the_images_stops_the_pipeline_before_any_training(tmp_path):
    from trustvision.config import AugmentConfig

    cfg = tiny(tmp_path)
    wide = cfg.mixnet.model_copy(update={"augment": AugmentConfig(crop_padding=100)})
    said = r"`mixnet\.augment\.crop_padding=100` is wider than the 28x28 images"
    with pytest.raises(ConfigError, match=said):
        pipeline.run_pipeline(cfg.model_copy(update={"mixnet": wide}), tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_the_gate_check_chooses_no_candidate_whose_gate_does_not_separate(tmp_path, monkeypatch):
    gate_check = benchmark("robust_gate_check")
    rows = [{"candidate": "a", "separation": -0.117}, {"candidate": "b", "separation": -0.122}]
    assert gate_check.choose(rows) is None and gate_check.choose([]) is None
    assert gate_check.choose([*rows, {"candidate": "c", "separation": 0.2}]) == "c"
    record = {"chosen": None, "candidates": rows}
    assert not gate_check.adopt_chosen("cifar10", record, tiny(tmp_path), tmp_path / "work")


def test_the_gate_check_report_is_rewritten_from_its_json_keeping_who_measured_it(
    tmp_path, monkeypatch
):
    gate_check = benchmark("robust_gate_check")
    monkeypatch.setattr(gate_check, "RESULTS", tmp_path)
    committed = json.loads((ROOT / "docs/results/robust-gate-check.json").read_text())
    for row in committed["datasets"]["cifar10"]["candidates"]:
        row["separation"] = -abs(row["separation"])  # as CIFAR-10's: no gate separates
    committed["datasets"]["cifar10"]["chosen"] = "anything"  # chosen again on rewriting
    (tmp_path / "robust-gate-check.json").write_text(json.dumps(committed))
    monkeypatch.setattr("sys.argv", ["robust_gate_check.py", "--report-only"])
    gate_check.main(["--report-only"])
    body = json.loads((tmp_path / "robust-gate-check.json").read_text())
    assert body["datasets"]["cifar10"]["chosen"] is None
    assert (body["command"], body["machine"]) == (committed["command"], committed["machine"])
    text = (tmp_path / "robust-gate-check.md").read_text()
    assert "No candidate separates" in text and "Rewritten from its JSON" in text
    (tmp_path / "robust-gate-check.json").write_text('{"datasets": {"cifar10": {}}}')
    with pytest.raises(ConfigError, match="restore it"):
        gate_check.main(["--report-only"])
    (tmp_path / "robust-gate-check.json").unlink()
    with pytest.raises(ConfigError, match=r"no .* to rewrite"):
        gate_check.main(["--report-only"])
