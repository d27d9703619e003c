"""`trustvision compact export-c`: the deployed model as C99 (float32 and int8), compiled with
the system compiler (-std=c99 -Wall -Wextra -Werror -O2) and run on the whole test set against
onnxruntime's fp32 and int8 models of the same run (and the fp32 one against PyTorch too)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.compact.c_export import (
    PREFIXES,
    check_conv,
    compile_command,
    fold,
    harness,
    plan,
)
from trustvision.compact.c_int8 import fixed_point
from trustvision.compact.export import INPUT, even_batch, session
from trustvision.compact.model import load_deployed
from trustvision.data.dataset import load_dataset
from trustvision.errors import ConfigError
from trustvision.models import create_model
from trustvision.runs import RunDir

ROOT = Path(__file__).parents[1]
RUNNER = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def compact_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("c") / "runs"
    args = [
        "compact", "train", str(ROOT / "configs/compact/mnist_demo.yaml"), f"runs_dir={runs}",
        "model.name=compact_tiny", "model.kwargs={separable: [true]}", "budget=1000",
        "data.train_subset=4096", "data.batch_size=64",
        "dual.epochs=2", "finetune.epochs=1", "unify.bn_batches=2",
        # a 438-parameter net near 30%: int8 costs it a point or so; C parity is tested here
        "export.max_int8_drop=2",
    ]  # fmt: skip
    result = RUNNER.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    result = RUNNER.invoke(app, ["compact", "export", str(run)])
    assert result.exit_code == 0, result.output
    return run


def c_logits(run: Path, variant: str, tmp_path: Path, images: np.ndarray) -> np.ndarray:
    """Export `variant`, compile it with its harness and run it on `images` (uint8)."""
    result = RUNNER.invoke(app, ["compact", "export-c", str(run), "--variant", variant])
    assert result.exit_code == 0, result.output
    folder, prefix = run / "c", PREFIXES[variant]
    source = (folder / f"{prefix}_model.c").read_text()
    assert "malloc" not in source and "#include <stdio.h>" not in source
    assert {line for line in source.splitlines() if line.startswith("#include")} == {
        f'#include "{prefix}_model.h"',
        "#include <stdint.h>",
        "#include <string.h>",
    }
    (folder / "harness.c").write_text(harness(prefix))
    binary = tmp_path / prefix
    build = compile_command(folder, binary, prefix)
    subprocess.run(build, check=True, capture_output=True, timeout=120)
    out = subprocess.run([str(binary)], input=images.tobytes(), capture_output=True, check=True)
    return np.frombuffer(out.stdout, dtype=np.float32).reshape(len(images), -1)


def onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    sess = session(path)
    pixels = images.astype(np.float32) / 255
    return np.concatenate(
        [sess.run(None, {INPUT: pixels[i : i + 1000]})[0] for i in range(0, len(pixels), 1000)]
    )


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_the_fp32_c_model_computes_the_onnx_and_pytorch_logits(compact_run, tmp_path):
    _, model, summary = load_deployed(RunDir.open(compact_run))
    dataset = load_dataset(summary["data"]["name"])
    images = np.ascontiguousarray(dataset.test.images)
    logits = c_logits(compact_run, "fp32", tmp_path, images)

    reference = onnx_logits(compact_run / "export/model.onnx", images)
    assert np.abs(logits - reference).max() <= 1e-4
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.999
    mean = torch.tensor(summary["data"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(summary["data"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        torch_logits = model((torch.tensor(images).float() / 255 - mean) / std).numpy()
    assert np.abs(logits - torch_logits).max() <= 1e-4


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_the_int8_c_model_matches_onnxruntimes_int8_model(compact_run, tmp_path):
    dataset = load_dataset("mnist")
    images, labels = np.ascontiguousarray(dataset.test.images), dataset.test.labels
    logits = c_logits(compact_run, "int8", tmp_path, images)
    source = (compact_run / "c" / "tv_int8_model.c").read_text()
    assert "float" not in source.split("void tv_int8_predict")[0]  # integer kernels only

    reference = onnx_logits(compact_run / "export/model.int8.onnx", images)
    c_top1, onnx_top1 = (logits.argmax(1) == labels).mean(), (reference.argmax(1) == labels).mean()
    assert abs(c_top1 - onnx_top1) <= 0.002
    # the same integers but where a requantised value rounds the other way (fixed point here,
    # float in onnxruntime): at most a step or two of the logits' scale
    step = np.diff(np.unique(reference)).min()
    assert np.abs(logits - reference).max() <= 2.01 * step
    assert c_top1 > 0.2  # compact_tiny (438 parameters) after 3 short epochs: above chance


def test_an_operator_the_compact_models_do_not_use_is_refused_by_name():
    model = create_model("compact_tiny", num_classes=10, in_channels=1)
    model.stem[2] = nn.GELU()
    with pytest.raises(ConfigError, match=r"does not support `GELU`"):
        plan(model, (1, 28, 28))
    wide = create_model("mnist_cnn", num_classes=10, in_channels=1)
    with pytest.raises(ConfigError, match=r"export-c"):
        plan(wide, (1, 28, 28))
    # operators the C kernels would compute wrongly: a pool of another stride, a depthwise
    # convolution with more outputs than inputs
    strided = create_model("compact_tiny", num_classes=10, in_channels=1)
    strided.stages[0][0] = nn.MaxPool2d(2, stride=1)
    with pytest.raises(ConfigError, match=r"does not support `MaxPool2d`"):
        plan(strided, (1, 28, 28))
    multiplied = create_model("compact_tiny", num_classes=10, in_channels=1)
    multiplied.stages[0][1] = nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False)
    with pytest.raises(ConfigError, match=r"one output channel per input channel"):
        plan(multiplied, (1, 28, 28))


@pytest.mark.parametrize("multiplier", [1e-6, 0.0123, 0.5, 0.999999, 1.0, 3.7])
def test_a_requantisation_multiplier_becomes_an_int32_mantissa_and_a_shift(multiplier):
    m, shift = fixed_point(multiplier)
    assert 1 << 30 <= m < 1 << 31
    assert m * 2.0**-shift == pytest.approx(multiplier, rel=2**-30)


def test_the_int8_variant_asks_for_the_quantised_model_first(compact_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(compact_run, copy)
    shutil.rmtree(copy / "export")
    result = RUNNER.invoke(app, ["compact", "export-c", str(copy), "--variant", "int8"])
    assert result.exit_code == 2
    said = " ".join(result.output.split())  # rich wraps at the path's length
    assert "trustvision compact export" in said and "no int8 ONNX model" in said


def test_a_convolution_or_batchnorm_the_c_would_get_wrong_is_refused():
    with pytest.raises(ConfigError, match="pads with zeros, not `circular`"):
        check_conv(nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"))
    conv = nn.Conv2d(3, 8, 3, padding=1)
    for bn in (nn.BatchNorm2d(8, affine=False), nn.BatchNorm2d(8, track_running_stats=False)):
        with pytest.raises(ConfigError, match="folds a BatchNorm with a scale"):
            fold(conv, bn)


def test_calibration_batches_are_equal_for_onnxruntimes_histograms():
    assert even_batch(1024, 64) == 64  # the default: as before
    assert even_batch(200, 64) == 50 and even_batch(7, 64) == 7 and even_batch(67, 64) == 1
