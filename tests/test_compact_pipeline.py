"""The whole compact run on a small MNIST subset: rows, resume, export, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustvision.compact.cli import compact_app
from trustvision.compact.config import CompactConfig
from trustvision.compact.train import train_compact, unify_variant
from trustvision.config import load_config
from trustvision.errors import ConfigError
from trustvision.runs import RunDir

ROOT = Path(__file__).parents[1]
SMALL = [
    "data.train_subset=2048",
    "data.test_subset=500",
    "data.batch_size=32",
    "model.name=compact_tiny",
    "budget=1000",
    "dual.epochs=2",
    "finetune.epochs=2",
    "unify.bn_batches=2",
    "bench.iterations=5",
    "bench.warmup=1",
    "bench.batch_iterations=2",
]


def small(tmp_path: Path, *extra: str) -> CompactConfig:
    return load_config(
        CompactConfig,
        ROOT / "configs/compact/mnist_demo.yaml",
        [f"runs_dir={tmp_path}", *SMALL, *extra],
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small run with every row, into a fixed directory."""
    tmp = tmp_path_factory.mktemp("compact")
    cfg = small(tmp, "rows=[plain, no_unfreeze, full]")
    return train_compact(cfg, run_dir=tmp / "run").path


def test_every_row_is_trained_and_summarised(finished: Path) -> None:
    summary = json.loads((finished / "summary.json").read_text())

    assert summary["status"] == "finished" and summary["deployed"] == "full"
    assert set(summary["rows"]) == {"plain", "no_unfreeze", "full"}
    assert all(row["epochs"] == 4 for row in summary["rows"].values())
    assert all(row["top1"] > 0.15 for row in summary["rows"].values())  # above chance
    assert summary["rows"]["no_unfreeze"]["schedule"] == [0, 0, 0]
    assert summary["rows"]["full"]["schedule"] == [
        1,
        1,
        0,
    ]  # the stem joins at the last epoch, not never
    assert set(summary["dual"]["branches"]) == {"original", "augmented", "weight_average"}
    assert summary["parameters"] <= summary["budget"]
    for sub in ("stage1-dual", "full", "no_unfreeze", "plain"):
        assert (finished / sub / "model.safetensors").is_file()


def test_rerun_into_the_same_directory_skips_finished_rows(finished: Path, tmp_path: Path) -> None:
    before = (finished / "full" / "metrics.jsonl").read_text()
    cfg = load_config(CompactConfig, finished / "config.yaml")

    train_compact(cfg, run_dir=finished)

    assert (finished / "full" / "metrics.jsonl").read_text() == before


def test_unify_variant_reuses_the_trained_stage_one(finished: Path) -> None:
    stage_one = (finished / "stage1-dual" / "metrics.jsonl").read_text()
    deployed = (finished / "model.safetensors").read_bytes()

    summary = unify_variant(RunDir(finished), mode="augmented")

    assert summary["status"] == "finished" and summary["schedule"] == [1, 1, 0]
    assert (finished / "full-unify-augmented" / "model.safetensors").is_file()
    assert (finished / "stage1-dual" / "metrics.jsonl").read_text() == stage_one
    assert (finished / "model.safetensors").read_bytes() == deployed


def test_stage_two_draws_its_batches_with_finetune_augment_prob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustvision.compact import train as train_module

    made: list[tuple[str, float]] = []
    real = train_module.AugmentedBatches

    def recording(base, *, mode, prob, seed):
        made.append((mode, prob))
        return real(base, mode=mode, prob=prob, seed=seed)

    monkeypatch.setattr(train_module, "AugmentedBatches", recording)
    cfg = small(tmp_path, "rows=[full]", "finetune.augment_prob=0", "unify.mode=original")
    train_compact(cfg, run_dir=tmp_path / "run")

    # stage 1 pairs, then BatchNorm re-estimation batches and stage 2 at the stage-2 rate
    assert ("pair", 0.5) in made and made[-1] == ("mixed", 0.0)
    assert ("mixed", 0.5) in made  # branch accuracies re-estimate BN on the run's mixture


def test_a_different_config_cannot_continue_a_run(finished: Path) -> None:
    cfg = load_config(CompactConfig, finished / "config.yaml", ["seed=5"])

    with pytest.raises(ConfigError, match="different config"):
        train_compact(cfg, run_dir=finished)


def test_over_budget_stops_before_training(tmp_path: Path) -> None:
    cfg = small(tmp_path, "budget=100")

    with pytest.raises(ConfigError, match=r"438 parameters, over the budget of 100"):
        train_compact(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_export_and_bench_commands(finished: Path) -> None:
    runner = CliRunner()

    exported = runner.invoke(compact_app, ["export", str(finished)])
    benched = runner.invoke(compact_app, ["bench", str(finished)])

    assert exported.exit_code in (0, 1), exported.output  # 1: a tiny model may miss int8 drop
    record = json.loads((finished / "export/export.json").read_text())
    assert record["fp32_parity"]["max_abs_diff"] <= 1e-4
    assert record["test_images"] == 500
    agreement = record["int8_parity"]["agreement"]
    assert f"ONNX int8 vs PyTorch: identical predictions {agreement:.2%}" in exported.output
    assert benched.exit_code == 0, benched.output
    bench = json.loads((finished / "bench.json").read_text())
    assert {r["threads"] for r in bench["latency"]} == {1, 2}
    assert bench["macs"] > 0 and bench["bytes"]["onnx_int8"] > 0


def test_cli_reports_config_errors_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        compact_app, ["train", str(ROOT / "configs/compact/mnist_demo.yaml"), "dual.epochz=1"]
    )

    assert result.exit_code == 2
    assert "dual.epochz" in result.output
