"""Unification: the deployed model has one branch's parameter count and the chosen features."""

from __future__ import annotations

import pytest
import torch

from trustvision.compact.config import CompactConfig
from trustvision.compact.dual import build_dual
from trustvision.compact.model import build_model, check_budget
from trustvision.compact.unify import recalibrate_bn, unify
from trustvision.config import load_config
from trustvision.errors import ConfigError
from trustvision.models import create_model

MNIST_BUDGET = 14_862


def trained_dual():
    """A compact_mnist dual model whose branches differ (as after stage 1)."""
    torch.manual_seed(0)
    dual = build_dual(create_model("compact_mnist", num_classes=10, in_channels=1))
    with torch.no_grad():
        for p in dual.augmented.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return dual.eval()


@pytest.mark.parametrize("mode", ["augmented", "original"])
def test_unified_model_is_the_kept_branch_with_a_new_head(mode: str) -> None:
    dual = trained_dual()
    source = dual.augmented if mode == "augmented" else dual.original
    x = torch.rand(4, 1, 28, 28)

    model = unify(dual, mode=mode, num_classes=10).eval()

    assert model.num_parameters() == source.num_parameters() == dual.original.num_parameters()
    assert model.num_parameters() == MNIST_BUDGET  # compact_mnist spends the paper's budget
    with torch.no_grad():
        assert torch.equal(model.features(x), source.features(x))
    assert not torch.equal(model.head.weight, source.head.weight)
    assert model.head.weight.data_ptr() != source.head.weight.data_ptr()


def test_average_mode_averages_weights_and_recalibrates_bn() -> None:
    dual = trained_dual()
    batches = [(torch.rand(32, 1, 28, 28), torch.zeros(32, dtype=torch.long)) for _ in range(3)]

    model = unify(dual, mode="average", num_classes=10, bn_batches=batches)

    original, augmented = dual.original.state_dict(), dual.augmented.state_dict()
    state = model.state_dict()
    for key, value in original.items():
        if "running" in key or "batches_tracked" in key or key.startswith("head."):
            continue
        assert torch.equal(state[key], (value + augmented[key]) / 2), key  # not the helper's
    stem_bn = model.stem[1]
    with torch.no_grad():
        pre = [model.stem[0](x) for x, _ in batches]
    means = torch.stack([p.mean((0, 2, 3)) for p in pre]).mean(0)
    assert torch.allclose(stem_bn.running_mean, means, atol=1e-5)
    assert model.num_parameters() == MNIST_BUDGET


def test_recalibrate_restores_momentum_and_mode() -> None:
    model = create_model("compact_tiny", num_classes=10, in_channels=1).eval()

    seen = recalibrate_bn(model, [(torch.rand(8, 1, 28, 28), None)])

    assert seen == 1 and not model.training
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_over_budget_config_errors_naming_count_and_budget() -> None:
    cfg = load_config(CompactConfig, None, ["budget=14000"])
    model = build_model(cfg, num_classes=10, image_shape=(1, 28, 28))

    with pytest.raises(ConfigError, match=r"14,862 parameters, over the budget of 14,000"):
        check_budget(model, budget=cfg.budget, name=cfg.model.name)


def test_paper_budgets_hold_for_the_registered_variants() -> None:
    mnist = create_model("compact_mnist", num_classes=10, in_channels=1)
    cifar = create_model("compact_cifar", num_classes=10, in_channels=3, image_size=32)

    deep = create_model("compact_mnist_deep", num_classes=10, in_channels=1)

    assert check_budget(mnist, budget=MNIST_BUDGET, name="compact_mnist") == MNIST_BUDGET
    assert check_budget(deep, budget=MNIST_BUDGET, name="compact_mnist_deep") == 14_126
    assert check_budget(cifar, budget=19_999, name="compact_cifar") < 20_000


def test_config_kwargs_change_the_architecture_and_bad_widths_are_config_errors() -> None:
    cfg = load_config(
        CompactConfig,
        None,
        [
            "model.name=compact_mnist",
            "model.kwargs.stem=12",
            "model.kwargs.stages=[[16,16],[24,28]]",
        ],
    )
    model = build_model(cfg, num_classes=10, image_shape=(1, 28, 28))

    # 3x3 convs without bias + BatchNorm (2 per channel), then a 28 -> 10 linear head.
    convs = [(1, 12), (12, 16), (16, 16), (16, 24), (24, 28)]
    assert model.num_parameters() == sum(9 * i * o + 2 * o for i, o in convs) + 28 * 10 + 10
    assert len(model.layer_groups()) == 4
    for bad in (["model.kwargs.stages=[16,24]"], ["model.kwargs.stem=0"]):
        bad = ["model.name=compact_mnist", *bad]
        with pytest.raises(ConfigError, match="stages"):
            build_model(
                load_config(CompactConfig, None, bad), num_classes=10, image_shape=(1, 28, 28)
            )
