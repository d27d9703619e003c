"""Tiny CNNs for the parameter budgets of the lightweight-CNN paper, registered as `compact_*`.

A compact net is a 3x3 conv stem, stages of 3x3 convs (plain, or depthwise-separable:
depthwise 3x3 then pointwise 1x1) each followed by BatchNorm and ReLU, a 2x2 max-pool
between stages, global average pooling and a linear head: no large fully connected layer,
so the parameters sit in the convolutions. Variants are data (a dict of keyword arguments).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from trustvision.errors import ConfigError
from trustvision.models.base import ImageClassifier, init_conv_bn, pooled_features
from trustvision.models.registry import register_model

# Widths of each stage's convs; a separable stage uses depthwise 3x3 + pointwise 1x1 convs.
VARIANTS: dict[str, dict[str, Any]] = {
    # 14,862 parameters at 10 classes and 1 channel: the paper's count, spent mostly at 7x7.
    "compact_mnist": {
        "stem": 18,
        "stages": ((20,), (26, 27)),
        "separable": (False, False),
        "image_size": 28,
    },
    # 14,126 parameters: two convs at 14x14 instead of one, chosen for MNIST on held-out
    # images (docs/results/compact-selection.md, row `arch 12 / 16,16 / 24,28`).
    "compact_mnist_deep": {
        "stem": 12,
        "stages": ((16, 16), (24, 28)),
        "separable": (False, False),
        "image_size": 28,
    },
    # 18,582 parameters at 10 classes and 3 channels (under the paper's 20,000), for 32x32.
    "compact_cifar": {
        "stem": 12,
        "stages": ((16, 20), (28, 32)),
        "separable": (False, False),
        "image_size": 32,
    },
    # A few hundred parameters: for tests and smoke runs.
    "compact_tiny": {"stem": 4, "stages": ((8,),), "separable": (False,), "image_size": 28},
}


def conv_bn_relu(in_ch: int, out_ch: int, *, kernel: int = 3, groups: int = 1) -> list[nn.Module]:
    """A 'same' conv without bias (BatchNorm supplies it), BatchNorm and ReLU."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


def separable(in_ch: int, out_ch: int) -> list[nn.Module]:
    """Depthwise 3x3 then pointwise 1x1, each with BatchNorm and ReLU (MobileNet v1)."""
    return [*conv_bn_relu(in_ch, in_ch, groups=in_ch), *conv_bn_relu(in_ch, out_ch, kernel=1)]


def build_stage(
    in_ch: int, widths: Sequence[int], *, separable_convs: bool, pool: bool
) -> nn.Sequential:
    """An optional 2x2 max-pool, then one conv block per width."""
    layers: list[nn.Module] = [nn.MaxPool2d(2)] if pool else []
    for width in widths:
        layers += separable(in_ch, width) if separable_convs else conv_bn_relu(in_ch, width)
        in_ch = width
    return nn.Sequential(*layers)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def build_compact(
    *,
    stem: int,
    stages: Sequence[Sequence[int]],
    separable: Sequence[bool],
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> ImageClassifier:
    """stem conv -> stages (a 2x2 max-pool before each) -> global average pool -> linear head."""
    if (
        not stages
        or not all(_is_sequence(s) and s for s in stages)
        or not _is_sequence(separable)
        or len(separable) != len(stages)
    ):
        raise ConfigError(
            f"`stages={stages}` needs one non-empty list of widths per stage and "
            f"`separable={separable}` one flag per stage"
        )
    if not all(isinstance(w, int) and w > 0 for w in [stem, *(w for s in stages for w in s)]):
        raise ConfigError(f"`stem={stem}` and `stages={stages}` need positive integer widths")
    if not isinstance(image_size, int) or image_size < 2 ** len(stages):
        raise ConfigError(
            f"`image_size={image_size}` is too small for {len(stages)} pooling stages: "
            f"use at least {2 ** len(stages)}"
        )
    blocks, width = [], stem
    for widths, sep in zip(stages, separable, strict=True):
        blocks.append(build_stage(width, widths, separable_convs=sep, pool=True))
        width = widths[-1]
    model = ImageClassifier(
        stem=nn.Sequential(*conv_bn_relu(in_channels, stem)),
        stages=blocks,
        neck=pooled_features(),
        feature_dim=width,
        num_classes=num_classes,
        input_shape=(in_channels, image_size, image_size),
    )
    init_conv_bn(model)
    return model


def _factory(variant: str) -> Callable[..., ImageClassifier]:
    """The registry factory of one variant; its signature lists the optional arguments.

    `stem`, `stages` and `separable` default to the variant's and may be given in a config
    (`model.kwargs`) to try another architecture without registering it; `separable`
    defaults to plain convs when `stages` is given.
    """
    arch = VARIANTS[variant]

    def factory(
        *,
        num_classes: int,
        in_channels: int,
        image_size: int = arch["image_size"],
        stem: int = arch["stem"],
        stages: Sequence[Sequence[int]] | None = None,
        separable: Sequence[bool] | None = None,
    ) -> ImageClassifier:
        if stages is None:
            stages = arch["stages"]
            separable = arch["separable"] if separable is None else separable
        elif separable is None:
            separable = (False,) * len(stages)
        return build_compact(
            stem=stem,
            stages=stages,
            separable=separable,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
        )

    factory.__name__ = factory.__qualname__ = variant
    factory.__doc__ = f"{variant}: stem {arch['stem']}, stages {arch['stages']}."
    return factory


for _variant in VARIANTS:
    register_model(_variant)(_factory(_variant))
