"""Wide residual networks (Zagoruyko & Komodakis 2016): pre-activation blocks, WRN-depth-k.

A network has (depth - 4) / 6 blocks per stage and 16k/32k/64k channels; the optional
dropout sits between a block's two convolutions. Features are BN-ReLU-pooled (64k-d).
"""

from __future__ import annotations

from collections.abc import Callable

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

# Variants are data: depth and widening factor.
VARIANTS: dict[str, dict[str, int]] = {
    "wrn16_4": {"depth": 16, "widen": 4},
    "wrn28_10": {"depth": 28, "widen": 10},
}


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, plus the (1x1 conv where shapes differ) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut: nn.Module | None = None
        if in_ch != out_ch or stride != 1:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        # The projection reads the activated input, as in the authors' code.
        skip = x if self.shortcut is None else self.shortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + skip


def build_wrn(
    *,
    depth: int,
    widen: int,
    num_classes: int,
    in_channels: int,
    drop_rate: float = 0.0,
    image_size: int = 32,
) -> ImageClassifier:
    """WRN-`depth`-`widen`; any `image_size` works (the features are pooled), it sets
    `input_shape`."""
    if (depth - 4) % 6 or depth < 10:
        raise ConfigError(f"WRN `depth={depth}` must be 6n + 4 with n >= 1 (e.g. 16, 28, 40)")
    if not 0.0 <= drop_rate < 1.0:
        raise ConfigError(f"`drop_rate={drop_rate}` must be in [0, 1)")
    check_image_size("wrn", image_size, 1)
    n = (depth - 4) // 6
    widths = (16 * widen, 32 * widen, 64 * widen)
    ins = (16, *widths[:-1])
    stages = [
        nn.Sequential(
            *(
                WideBlock(i if b == 0 else o, o, stride=s if b == 0 else 1, drop_rate=drop_rate)
                for b in range(n)
            )
        )
        for i, o, s in zip(ins, widths, (1, 2, 2), strict=True)
    ]
    neck = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True), *pooled_features())
    model = ImageClassifier(
        stem=nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
        stages=stages,
        neck=neck,
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
        *, num_classes: int, in_channels: int, drop_rate: float = 0.0, image_size: int = 32
    ) -> ImageClassifier:
        return build_wrn(
            **arch,
            num_classes=num_classes,
            in_channels=in_channels,
            drop_rate=drop_rate,
            image_size=image_size,
        )

    factory.__name__ = factory.__qualname__ = variant
    factory.__doc__ = f"WRN-{arch['depth']}-{arch['widen']} (pre-activation, optional dropout)."
    return factory


for _variant in VARIANTS:
    register_model(_variant)(_factory(_variant))


@register_model("wrn")
def wrn(
    *,
    num_classes: int,
    in_channels: int,
    depth: int = 16,
    widen: int = 4,
    drop_rate: float = 0.0,
    image_size: int = 32,
) -> ImageClassifier:
    """WRN-depth-widen of any depth 6n + 4 and width (pre-activation, optional dropout): the
    family of RobustBench's WideResNets (`trustvision robust import`)."""
    return build_wrn(
        depth=depth,
        widen=widen,
        num_classes=num_classes,
        in_channels=in_channels,
        drop_rate=drop_rate,
        image_size=image_size,
    )
