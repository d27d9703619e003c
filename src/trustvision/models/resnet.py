"""Residual networks with basic blocks and a CIFAR stem (3x3 conv, stride 1, no max-pool).

`resnet8/20/32`: He et al. 2016, Sec. 4.2 (6n+2 layers, 16/32/64 channels).
`resnet18/34`: the ImageNet stage layout (64-128-256-512) on the CIFAR stem, as in the
FedLoGe and most CIFAR code. A shortcut that changes shape is a 1x1 conv + BN projection
(`shortcut="projection"`, the default) or He et al.'s parameter-free option A
(`shortcut="pad"`: subsample and zero-pad the channels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from trustvision.errors import ConfigError
from trustvision.models.base import (
    ImageClassifier,
    check_image_size,
    init_conv_bn,
    pooled_features,
)
from trustvision.models.registry import register_model

Shortcut = Literal["projection", "pad"]
SHORTCUTS = ("projection", "pad")

# Variants are data: blocks per stage and channels per stage.
VARIANTS: dict[str, dict[str, tuple[int, ...]]] = {
    "resnet8": {"depths": (1, 1, 1), "widths": (16, 32, 64)},
    "resnet20": {"depths": (3, 3, 3), "widths": (16, 32, 64)},
    "resnet32": {"depths": (5, 5, 5), "widths": (16, 32, 64)},
    "resnet18": {"depths": (2, 2, 2, 2), "widths": (64, 128, 256, 512)},
    "resnet34": {"depths": (3, 4, 6, 3), "widths": (64, 128, 256, 512)},
}


class PadShortcut(nn.Module):
    """Option A: take every `stride`-th pixel and append zero channels (no parameters)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_ch - in_ch, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))


def _shortcut(in_ch: int, out_ch: int, stride: int, kind: Shortcut) -> nn.Module:
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    if kind == "pad":
        return PadShortcut(in_ch, out_ch, stride)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (post-activation)."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, shortcut)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _stage(
    in_ch: int, out_ch: int, *, depth: int, stride: int, shortcut: Shortcut
) -> nn.Sequential:
    blocks = [BasicBlock(in_ch, out_ch, stride=stride, shortcut=shortcut)]
    blocks += [BasicBlock(out_ch, out_ch, stride=1, shortcut=shortcut) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


def build_resnet(
    *,
    depths: tuple[int, ...],
    widths: tuple[int, ...],
    num_classes: int,
    in_channels: int,
    shortcut: Shortcut = "projection",
    image_size: int = 32,
) -> ImageClassifier:
    """A CIFAR-stem ResNet; the first stage keeps the resolution, each later one halves it.
    Any `image_size` works (the features are pooled); it sets `input_shape`."""
    if shortcut not in SHORTCUTS:
        raise ConfigError(f"`shortcut={shortcut}` is not one of: {', '.join(SHORTCUTS)}")
    check_image_size("resnet", image_size, 1)
    stem = nn.Sequential(
        nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    )
    ins = (widths[0], *widths[:-1])
    stages = [
        _stage(i, o, depth=d, stride=1 if k == 0 else 2, shortcut=shortcut)
        for k, (i, o, d) in enumerate(zip(ins, widths, depths, strict=True))
    ]
    model = ImageClassifier(
        stem=stem,
        stages=stages,
        neck=pooled_features(),
        feature_dim=widths[-1],
        num_classes=num_classes,
        input_shape=(in_channels, image_size, image_size),
    )
    init_conv_bn(model)
    return model


def _factory(variant: str) -> Callable[..., ImageClassifier]:
    """The registry factory of one variant; its signature lists the optional arguments."""
    arch = VARIANTS[variant]

    def factory(
        *,
        num_classes: int,
        in_channels: int,
        shortcut: Shortcut = "projection",
        image_size: int = 32,
    ) -> ImageClassifier:
        return build_resnet(
            **arch,
            num_classes=num_classes,
            in_channels=in_channels,
            shortcut=shortcut,
            image_size=image_size,
        )

    factory.__name__ = factory.__qualname__ = variant
    factory.__doc__ = f"{variant}: basic-block stages {arch['depths']}, widths {arch['widths']}."
    return factory


for _variant in VARIANTS:
    register_model(_variant)(_factory(_variant))
