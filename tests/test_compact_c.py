"""`trustvision compact export-c`: the deployed model as C99, compiled with the system compiler
(-Wall -Wextra -Werror) and run on the test set against the PyTorch model it came from."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.compact.c_export import compile_command, harness, plan
from trustvision.compact.model import load_deployed
from trustvision.data.dataset import load_dataset
from trustvision.errors import ConfigError
from trustvision.models import create_model
from trustvision.runs import RunDir

ROOT = Path(__file__).parents[1]
RUNNER = CliRunner()
TEST_IMAGES = 2000

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def compact_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("c") / "runs"
    args = [
        "compact", "train", str(ROOT / "configs/compact/mnist_demo.yaml"), f"runs_dir={runs}",
        "model.name=compact_tiny", "budget=1000", "data.train_subset=1024", "data.batch_size=64",
        "dual.epochs=1", "finetune.epochs=1", "unify.bn_batches=2",
    ]  # fmt: skip
    result = RUNNER.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    return run


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_the_c_model_computes_the_pytorch_logits_on_the_test_set(compact_run, tmp_path):
    result = RUNNER.invoke(app, ["compact", "export-c", str(compact_run)])
    assert result.exit_code == 0, result.output
    folder = compact_run / "c"
    source = (folder / "tv_model.c").read_text()
    assert "malloc" not in source and "#include <stdio.h>" not in source
    assert {line for line in source.splitlines() if line.startswith("#include")} == {
        '#include "tv_model.h"',
        "#include <stdint.h>",
        "#include <string.h>",
    }
    (folder / "harness.c").write_text(harness())
    binary = tmp_path / "model"
    subprocess.run(compile_command(folder, binary), check=True, capture_output=True, timeout=120)

    _, model, summary = load_deployed(RunDir.open(compact_run))
    dataset = load_dataset(summary["data"]["name"])
    images = np.ascontiguousarray(dataset.test.images[:TEST_IMAGES])
    run = subprocess.run([str(binary)], input=images.tobytes(), capture_output=True, check=True)
    c_logits = np.frombuffer(run.stdout, dtype=np.float32).reshape(len(images), -1)

    mean = torch.tensor(summary["data"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(summary["data"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        torch_logits = model((torch.from_numpy(images).float() / 255 - mean) / std).numpy()
    assert np.abs(c_logits - torch_logits).max() <= 1e-4
    agree = (c_logits.argmax(1) == torch_logits.argmax(1)).mean()
    assert agree >= 0.999


def test_an_operator_the_compact_models_do_not_use_is_refused_by_name():
    model = create_model("compact_tiny", num_classes=10, in_channels=1)
    model.stem[2] = nn.GELU()
    with pytest.raises(ConfigError, match=r"does not support `GELU`"):
        plan(model, (1, 28, 28))
    wide = create_model("mnist_cnn", num_classes=10, in_channels=1)
    with pytest.raises(ConfigError, match=r"export-c"):
        plan(wide, (1, 28, 28))
