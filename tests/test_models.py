"""Every registered model keeps the contract; known parameter counts match analytic formulas."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import torch

from trustvision.errors import ConfigError
from trustvision.models import ImageClassifier, create_model, create_model_for, list_models

EXPECTED = {
    "mnist_cnn", "smallcnn", "gap_cnn", "resnet8", "resnet20", "resnet32", "resnet18",
    "resnet34", "wrn16_4", "wrn28_10", "compact_mnist", "compact_cifar",
}  # fmt: skip
HEAVY = {"wrn28_10", "resnet34"}  # tested on a batch of one to keep the file fast


def _batch(model: ImageClassifier, name: str) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(1 if name in HEAVY else 2, *model.input_shape)


@pytest.fixture(scope="module", params=list_models())
def built(request: pytest.FixtureRequest) -> tuple[str, ImageClassifier, torch.Tensor]:
    name = request.param
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3).eval()
    return name, model, _batch(model, name)


def test_registry_holds_every_family() -> None:
    assert set(list_models()) >= EXPECTED
    assert list_models() == sorted(list_models())


def test_a_fresh_process_lists_every_model_compact_ones_included() -> None:
    """Registration must not depend on what else a process happened to import."""
    from typer.testing import CliRunner

    code = "from trustvision.models import list_models; print(' '.join(list_models()))"
    listed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(listed) >= EXPECTED
    from trustvision.cli import app

    shown = CliRunner().invoke(app, ["models", "--in-channels", "1"]).output
    assert "compact_mnist" in shown and "14,862" in shown


def test_forward_is_head_of_features(built: tuple[str, ImageClassifier, torch.Tensor]) -> None:
    _, model, x = built

    with torch.no_grad():
        features = model.features(x)
        logits = model(x)

    assert features.shape == (len(x), model.feature_dim)
    assert logits.shape == (len(x), 10)
    assert torch.allclose(logits, model.head(features))
    assert (features >= 0).all()  # post-ReLU


def test_num_parameters(built: tuple[str, ImageClassifier, torch.Tensor]) -> None:
    _, model, _ = built
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.head.parameters())

    model.head.requires_grad_(False)
    trainable = model.num_parameters(trainable_only=True)
    model.head.requires_grad_(True)

    assert model.num_parameters() == total
    assert trainable == total - head


def test_layer_groups_cover_every_parameter_once(
    built: tuple[str, ImageClassifier, torch.Tensor],
) -> None:
    _, model, _ = built

    groups = model.layer_groups()

    seen = Counter(id(p) for group in groups for p in group.parameters())
    assert set(seen) == {id(p) for p in model.parameters()}
    assert set(seen.values()) == {1}
    assert groups[-1] is model.head
    assert len(groups) >= 3


def test_feature_maps_are_stage_outputs(built: tuple[str, ImageClassifier, torch.Tensor]) -> None:
    _, model, x = built

    with torch.no_grad():
        maps = model.feature_maps(x)
        features = model.features(x)

    assert len(maps) == len(model.stages) >= 1
    assert all(m.ndim == 4 and len(m) == len(x) for m in maps)
    assert torch.allclose(model.neck(maps[-1]), features)


@pytest.mark.parametrize("name", list_models())
def test_reset_head_and_one_channel_input(name: str) -> None:
    model = create_model(name, num_classes=10, in_channels=1).eval()
    x = _batch(model, name)
    assert model.input_shape[0] == 1

    model.reset_head(7, bias=False)

    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (len(x), 7)
    assert model.head.bias is None
    assert model.num_classes == 7


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ConfigError, match=r"`resnet21`.*resnet20"):
        create_model("resnet21", num_classes=10)


def test_bad_argument_is_named() -> None:
    with pytest.raises(ConfigError, match=r"`width`.*`shortcut`"):
        create_model("resnet20", num_classes=10, width=2)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet8", {"shortcut": "conv"}),
        ("wrn16_4", {"drop_rate": 1.5}),
        ("smallcnn", {"image_size": 8}),
        ("mnist_cnn", {"num_classes": 0}),
    ],
)
def test_bad_values_are_config_errors(name: str, kwargs: dict) -> None:
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(ConfigError):
        create_model(name, **kwargs)


def _conv(cin: int, cout: int, k: int = 3, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def _bn(c: int) -> int:
    return 2 * c  # scale and shift


def _cifar_resnet(n: int, classes: int, cin: int, projection: bool) -> int:
    """He et al.'s 6n+2 network, 16/32/64 channels; projections where the shape changes."""
    total = _conv(cin, 16) + _bn(16)
    for c_in, c_out in ((16, 16), (16, 32), (32, 64)):
        first = _conv(c_in, c_out) + _conv(c_out, c_out) + 2 * _bn(c_out)
        if projection and c_in != c_out:
            first += _conv(c_in, c_out, k=1) + _bn(c_out)
        total += first + (n - 1) * (2 * _conv(c_out, c_out) + 2 * _bn(c_out))
    return total + 64 * classes + classes


@pytest.mark.parametrize(("name", "n"), [("resnet8", 1), ("resnet20", 3), ("resnet32", 5)])
@pytest.mark.parametrize("shortcut", ["projection", "pad"])
def test_cifar_resnet_parameter_count(name: str, n: int, shortcut: str) -> None:
    model = create_model(name, num_classes=10, in_channels=3, shortcut=shortcut)
    assert model.num_parameters() == _cifar_resnet(n, 10, 3, shortcut == "projection")


def test_known_totals() -> None:
    assert _cifar_resnet(1, 10, 3, projection=True) == 78_042
    assert _cifar_resnet(3, 10, 3, projection=True) == 272_474
    assert _cifar_resnet(3, 10, 3, projection=False) == 269_722  # He et al.'s 0.27M


def test_smallcnn_parameter_count() -> None:
    convs = _conv(1, 32, bias=True) + _conv(32, 32, bias=True)
    convs += _conv(32, 64, bias=True) + _conv(64, 64, bias=True)
    # 28 -> 26 -> 24 -> pool 12 -> 10 -> 8 -> pool 4: 64 * 4 * 4 inputs to FC200
    fcs = (64 * 4 * 4 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10)

    model = create_model("smallcnn", num_classes=10, in_channels=1)

    assert model.num_parameters() == convs + fcs == 312_202
    assert model.feature_dim == 200


def test_mnist_cnn_feature_norm_bounds_the_feature_scale() -> None:
    """With `feature_norm`, scaling the feature layer's weights leaves the features unchanged."""
    torch.manual_seed(0)
    plain = create_model("mnist_cnn", num_classes=10, in_channels=1)
    normed = create_model("mnist_cnn", num_classes=10, in_channels=1, feature_norm=True)
    x = torch.rand(4, 1, 28, 28)
    for model in (plain, normed):
        model.eval()
    with torch.no_grad():
        before = (plain.features(x).norm(), normed.features(x).norm())
        for model in (plain, normed):
            linear = next(m for m in model.neck if isinstance(m, torch.nn.Linear))
            linear.weight.mul_(10.0)
        after = (plain.features(x).norm(), normed.features(x).norm())

    assert after[0] > 5 * before[0]  # the plain neck grows with its weights
    assert torch.allclose(after[1], before[1], rtol=1e-2)  # up to LayerNorm eps
    assert normed.num_parameters() == plain.num_parameters() - 128 + 2 * 128  # bias -> LN


@pytest.mark.parametrize("name", ["mnist_cnn", "smallcnn", "gap_cnn", "resnet8"])
def test_a_model_built_for_a_data_set_takes_its_image_size(name):
    model = create_model_for(name, num_classes=10, image_shape=(3, 32, 32))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    kept = create_model_for("mnist_cnn", num_classes=10, image_shape=(1, 32, 32), image_size=28)
    assert kept.input_shape == (1, 28, 28)  # a size given is kept


@pytest.mark.parametrize("name", ["resnet8", "wrn"])
def test_pooled_models_record_the_image_size_of_their_data_set(name):
    model = create_model_for(name, num_classes=10, image_shape=(1, 28, 28))
    assert model.input_shape == (1, 28, 28)  # export and MAC counts use it
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"`image_size` >= 1, got `0`"):
        create_model(name, num_classes=10, in_channels=1, image_size=0)


def test_smallcnn_refuses_a_size_its_layers_cannot_reach():
    with pytest.raises(ConfigError, match=r"`image_size` >= 16"):
        create_model("smallcnn", num_classes=10, in_channels=1, image_size=14)
