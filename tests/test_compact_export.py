"""Deployment: ONNX matches PyTorch, int8 runs and is smaller, MACs match an analytic count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trustvision.compact.bench import latency
from trustvision.compact.config import BenchConfig
from trustvision.compact.export import (
    Deployable,
    export_onnx,
    file_size,
    ort_logits,
    parity,
    quantize_int8,
    session,
    torch_logits,
)
from trustvision.compact.model import count_macs
from trustvision.models import create_model

pytest.importorskip("onnxruntime")

MEAN, STD = (0.1307,), (0.3081,)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Deployable, Path, Path]:
    """compact_mnist with non-trivial BatchNorm statistics, exported to fp32 and int8."""
    torch.manual_seed(0)
    model = create_model("compact_mnist", num_classes=10, in_channels=1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(64, 1, 28, 28))  # BN statistics away from (0, 1)
    deployable = Deployable(model, mean=MEAN, std=STD).eval()
    out = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(deployable, out / "model.onnx", input_shape=(1, 28, 28))
    calibration = np.random.default_rng(0).random((128, 1, 28, 28), dtype=np.float32)
    int8 = quantize_int8(fp32, out / "model.int8.onnx", calibration=calibration)
    return deployable, fp32, int8


def test_onnx_matches_pytorch_within_1e4(exported: tuple[Deployable, Path, Path]) -> None:
    deployable, fp32, _ = exported
    pixels = np.random.default_rng(1).random((300, 1, 28, 28), dtype=np.float32)

    result = parity(torch_logits(deployable, pixels), ort_logits(session(fp32), pixels))

    assert result["max_abs_diff"] <= 1e-4
    assert result["agreement"] == 1.0


def test_onnx_batch_dimension_is_dynamic(exported: tuple[Deployable, Path, Path]) -> None:
    _, fp32, _ = exported
    sess = session(fp32)

    for n in (1, 7):
        assert ort_logits(sess, np.zeros((n, 1, 28, 28), np.float32)).shape == (n, 10)


def test_normalisation_is_inside_the_exported_model(
    exported: tuple[Deployable, Path, Path],
) -> None:
    deployable, fp32, _ = exported
    pixels = np.random.default_rng(2).random((5, 1, 28, 28), dtype=np.float32)

    with torch.no_grad():
        by_hand = deployable.model((torch.from_numpy(pixels) - MEAN[0]) / STD[0]).numpy()

    assert np.abs(ort_logits(session(fp32), pixels) - by_hand).max() <= 1e-4


def test_int8_runs_and_is_smaller(exported: tuple[Deployable, Path, Path]) -> None:
    deployable, fp32, int8 = exported
    pixels = np.random.default_rng(3).random((50, 1, 28, 28), dtype=np.float32)

    logits = ort_logits(session(int8), pixels)

    assert logits.shape == (50, 10) and np.isfinite(logits).all()
    assert np.corrcoef(logits.ravel(), torch_logits(deployable, pixels).ravel())[0, 1] > 0.9
    assert file_size(int8) < 0.6 * file_size(fp32)


def test_histogram_calibration_takes_a_count_that_is_no_multiple_of_its_batch(
    exported: tuple[Deployable, Path, Path], tmp_path: Path
) -> None:
    """onnxruntime's percentile and entropy calibrators stack per-batch histograms, which
    fails on a short last batch: 100 images must be cut into equal batches."""
    _, fp32, _ = exported
    calibration = np.random.default_rng(4).random((100, 1, 28, 28), dtype=np.float32)
    int8 = quantize_int8(
        fp32, tmp_path / "p.int8.onnx", calibration=calibration, method="percentile"
    )
    assert np.isfinite(ort_logits(session(int8), calibration[:5])).all()


def test_latency_rows_cover_every_engine_and_thread_count(
    exported: tuple[Deployable, Path, Path],
) -> None:
    deployable, fp32, int8 = exported
    cfg = BenchConfig(threads=[1], warmup=1, iterations=5, batch_size=8, batch_iterations=2)

    rows = latency(
        model=deployable,
        onnx_paths={"fp32": fp32, "int8": int8},
        image=np.zeros((1, 28, 28), np.float32),
        cfg=cfg,
    )

    assert [r["engine"] for r in rows] == [
        "pytorch eager fp32",
        "onnxruntime fp32",
        "onnxruntime int8",
    ]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] and r["throughput"] > 0 for r in rows)


def conv_macs(*, cin: int, cout: int, k: int, out_hw: int, groups: int = 1) -> int:
    """Multiply-accumulates of a conv layer, by hand."""
    return cout * out_hw * out_hw * (cin // groups) * k * k


def test_macs_equal_an_analytic_count_for_a_small_conv_net() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 16x16
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Conv2d(8, 12, 1),  # pointwise
        nn.Conv2d(12, 16, 3, stride=2, padding=1),  # 4x4
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    analytic = (
        conv_macs(cin=3, cout=8, k=3, out_hw=16)
        + conv_macs(cin=8, cout=8, k=3, out_hw=8, groups=8)
        + conv_macs(cin=8, cout=12, k=1, out_hw=8)
        + conv_macs(cin=12, cout=16, k=3, out_hw=4)
        + 16 * 10
    )

    assert count_macs(net, (3, 16, 16)) == analytic


def test_macs_of_compact_mnist_equal_the_analytic_count() -> None:
    model = create_model("compact_mnist", num_classes=10, in_channels=1)

    analytic = (
        conv_macs(cin=1, cout=18, k=3, out_hw=28)
        + conv_macs(cin=18, cout=20, k=3, out_hw=14)
        + conv_macs(cin=20, cout=26, k=3, out_hw=7)
        + conv_macs(cin=26, cout=27, k=3, out_hw=7)
        + 27 * 10
    )

    assert count_macs(model, model.input_shape) == analytic
