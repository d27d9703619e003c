"""RobustBench models in: a zoo-format WideResNet checkpoint (made here with random weights)
imported as a base, mixed with a standard model, and its mix's card in RobustBench's schema."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from trustvision.cli import app
from trustvision.config import load_config
from trustvision.errors import ConfigError
from trustvision.models import create_model
from trustvision.robust.card import MODEL_INFO_FIELDS
from trustvision.robust.commands.eval import run_eval
from trustvision.robust.commands.import_model import import_zoo
from trustvision.robust.commands.mix import run_mix
from trustvision.robust.config import EvalConfig, MixConfig
from trustvision.robust.runs import load_base

ROOT = Path(__file__).parents[1]
RUNNER = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")


def zoo_name(ours: str) -> str:
    """Our `wrn` tensor name as RobustBench's WideResNet names it."""
    if ours.startswith("stem."):
        return "conv1." + ours.removeprefix("stem.")
    if ours.startswith("neck.0."):
        return "bn1." + ours.removeprefix("neck.0.")
    if ours.startswith("head."):
        return "fc." + ours.removeprefix("head.")
    _, stage, block, name, tail = ours.split(".", 4)
    name = "convShortcut" if name == "shortcut" else name
    return f"block{int(stage) + 1}.layer.{block}.{name}.{tail}"


def zoo_checkpoint(path: Path, *, extra: dict | None = None) -> torch.nn.Module:
    """A WRN-10-2 for 1-channel 28x28 images with random weights, saved as the zoo saves
    theirs (`state_dict`, DataParallel's `module.` prefix, the unused `sub_block1`)."""
    torch.manual_seed(0)
    model = create_model("wrn", num_classes=10, in_channels=1, depth=10, widen=2).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn_like(tensor))  # BN statistics too: nothing default
    state = {f"module.{zoo_name(k)}": v for k, v in model.state_dict().items()}
    state["module.sub_block1.layer.0.conv1.weight"] = torch.zeros(32, 16, 3, 3)
    torch.save({"state_dict": state | (extra or {}), "epoch": 99}, path)
    return model


def test_every_tensor_arrives_and_the_model_computes_what_the_zoo_model_did(tmp_path):
    original = zoo_checkpoint(tmp_path / "zoo.pt")
    run = import_zoo(tmp_path / "zoo.pt", dataset="mnist", runs_dir=str(tmp_path / "runs"))
    imported = load_base(run.path)
    x = torch.rand(4, 1, 28, 28)
    # identity normalisation: [0, 1] pixels in; the imported copy runs channels-last, so its
    # sums differ from the original's in the last bits only
    torch.testing.assert_close(imported(x), original(x), rtol=1e-5, atol=1e-5)
    summary = run.read_summary()
    assert (
        summary["zoo"]["architecture"] == "WideResNet-10-2" and "authors" in summary["provenance"]
    )
    assert (run.path / "model.safetensors").is_file() and not list(run.path.glob("*.pt"))


def test_a_stray_tensor_or_a_pickle_is_refused(tmp_path):
    zoo_checkpoint(tmp_path / "stray.pt", extra={"module.extra_head.weight": torch.zeros(2)})
    with pytest.raises(ConfigError, match=r"unused tensors \['extra_head.weight'\]"):
        import_zoo(tmp_path / "stray.pt", dataset="mnist", runs_dir=str(tmp_path / "runs"))
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Path("/etc")}, tmp_path / "code.pt")
    with pytest.raises(ConfigError, match=r"weights_only=True") as refused:
        import_zoo(tmp_path / "code.pt", dataset="mnist", runs_dir=str(tmp_path / "runs"))
    assert "pathlib" in str(refused.value)  # what was refused, not torch's advice to load it
    assert "set to `False`" not in str(refused.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "state",
    [
        {"conv1.weight": torch.zeros(16, 3, 3, 3), "fc.weight": torch.zeros(10, 64)},  # resnet
        {
            "conv1.weight": torch.zeros(16),
            "block1.layer.0.conv1.weight": torch.zeros(32, 16, 3, 3),
            "fc.weight": torch.zeros(10, 64),
        },
    ],
)
def test_another_architecture_is_refused_by_name(tmp_path, state):
    torch.save({"state_dict": state}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"not a RobustBench WideResNet \(no .*conv1.weight"):
        import_zoo(tmp_path / "other.pt", dataset="mnist", runs_dir=str(tmp_path / "runs"))


@pytest.mark.parametrize("eps", ["8", "-0.1", "nan"])
def test_an_eps_outside_the_unit_interval_is_refused(tmp_path, eps):
    zoo_checkpoint(tmp_path / "zoo.pt")
    args = ["robust", "import", str(tmp_path / "zoo.pt"), "--dataset", "mnist", "--eps", eps]
    result = RUNNER.invoke(app, [*args, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "l_inf budget in (0, 1]" in result.output
    assert not (tmp_path / "runs").exists()


def test_an_imported_model_is_mixed_and_the_mix_card_has_robustbench_fields(tmp_path):
    runs = tmp_path / "runs"
    train = [
        "robust", "train", str(ROOT / "configs/robust/mnist_standard.yaml"), "epochs=1",
        "data.train_subset=384", "data.test_subset=100", "data.batch_size=64", "device=cpu",
        f"runs_dir={runs}", "name=std",
    ]  # fmt: skip
    assert RUNNER.invoke(app, train).exit_code == 0
    (standard,) = runs.glob("std-*")
    zoo_checkpoint(tmp_path / "zoo.pt")
    imported = RUNNER.invoke(
        app,
        ["robust", "import", str(tmp_path / "zoo.pt"), "--dataset", "mnist", "--like",
         str(standard), "--eps", "0.3", "--runs-dir", str(runs)],
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output
    (robust,) = runs.glob("zoo-*")
    mix_cfg = load_config(
        MixConfig,
        None,
        [f"standard={standard}", f"robust={robust}", "eps=0.3", f"runs_dir={runs}",
         "sweep.alphas=[0.0, 0.5, 1.0]", "sweep.subset=8", "sweep.temperatures_rob=[1.0]",
         "sweep.attack={attacks: [apgd-ce], n_iter: 2}"],
    )  # fmt: skip
    mix = run_mix(mix_cfg)
    # its knobs were chosen on images the zoo model's authors may have trained on: said so
    images = mix.read_summary()["selection"]["validation_images"]
    assert images["imported_bases"] == [str(robust)] and "was imported" in images["drawn"]
    eval_cfg = load_config(
        EvalConfig,
        None,
        [f"model={mix.path}", f"runs_dir={runs}", "eval.subset=6", "eval.test_subset=50",
         "eval.chunk=6", "eval.version=custom", "eval.pgd_steps=2", "eval.eps_sweep_subset=4",
         "eval.custom={attacks: [apgd-ce], n_iter: 2}"],
    )  # fmt: skip
    card = json.loads((run_eval(eval_cfg).path / "model_info.json").read_text())
    assert list(card) == list(MODEL_INFO_FIELDS)
    assert card["number_forward_passes"] == 2 and card["eps"] == "0.3"
    assert card["architecture"] == "smallcnn + wrn"
