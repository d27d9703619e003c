"""Small plain CNNs for 28x28 digits and clothes: a fast MNIST baseline, a conv-BN-ReLU net with
global average pooling (the feature path of the paper's ResNets) and TRADES' SmallCNN."""

from __future__ import annotations

from itertools import pairwise

from torch import nn

from trustvision.errors import ConfigError
from trustvision.models.base import ImageClassifier, check_image_size, init_conv_bn
from trustvision.models.registry import register_model


def _check_rate(model: str, drop_rate: float) -> None:
    if not 0.0 <= drop_rate < 1.0:
        raise ConfigError(f"model `{model}`: `drop_rate={drop_rate}` must be in [0, 1)")


def _conv_bn_pool(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 'same' conv, BatchNorm, ReLU, 2x2 max-pool (halves the size, rounding down)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


@register_model("mnist_cnn")
def mnist_cnn(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int = 28,
    drop_rate: float = 0.0,
    feature_norm: bool = False,
) -> ImageClassifier:
    """conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, FC128-[LayerNorm-]ReLU (features, 128-d), head.

    A fast baseline: ~0.42M parameters at 28x28, ~99% MNIST test accuracy after 2 epochs.
    """
    check_image_size("mnist_cnn", image_size, 4)
    _check_rate("mnist_cnn", drop_rate)
    side = image_size // 2 // 2
    model = ImageClassifier(
        stem=nn.Identity(),
        stages=[_conv_bn_pool(in_channels, 32), _conv_bn_pool(32, 64)],
        neck=nn.Sequential(
            nn.Flatten(),
            nn.Dropout(drop_rate),
            nn.Linear(64 * side * side, 128, bias=not feature_norm),
            nn.LayerNorm(128) if feature_norm else nn.Identity(),
            nn.ReLU(inplace=True),
        ),
        feature_dim=128,
        num_classes=num_classes,
        input_shape=(in_channels, image_size, image_size),
    )
    init_conv_bn(model)
    return model


@register_model("gap_cnn")
def gap_cnn(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int = 28,
    widths: tuple[int, ...] | list[int] = (32, 64, 128),
) -> ImageClassifier:
    """conv-BN-ReLU stages (a 2x2 max-pool between them), global average pooling, head.

    Its features are what a CIFAR ResNet's are, without the residual connections: post-ReLU,
    BatchNorm-ed channels averaged over space (`widths[-1]`-d, unnormalised), so a method
    that depends on the feature scale (FedLoGe's SSE-C) sees the same kind of features as in
    the paper. At 28x28 with the default widths: 94k parameters, 7.45 M MACs.
    """
    check_image_size("gap_cnn", image_size, 2 ** (len(widths) - 1))
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ConfigError(f"model `gap_cnn`: `widths={widths}` must be positive integers")
    chans = [in_channels, *widths]
    stages = [_conv_bn_pool(a, b) for a, b in pairwise(chans[:-1])]
    last = nn.Sequential(
        nn.Conv2d(chans[-2], chans[-1], 3, padding=1, bias=False),
        nn.BatchNorm2d(chans[-1]),
        nn.ReLU(inplace=True),
    )
    model = ImageClassifier(
        stem=nn.Identity(),
        stages=[*stages, last],
        neck=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        feature_dim=widths[-1],
        num_classes=num_classes,
        input_shape=(in_channels, image_size, image_size),
    )
    init_conv_bn(model)
    return model


def _two_convs_pool(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two unpadded 3x3 convs with bias and ReLU, then a 2x2 max-pool (TRADES' block)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


@register_model("smallcnn")
def smallcnn(
    *, num_classes: int, in_channels: int, image_size: int = 28, drop_rate: float = 0.5
) -> ImageClassifier:
    """TRADES' SmallCNN: conv32-conv32-pool-conv64-conv64-pool-FC200-dropout-FC200 (features)."""
    check_image_size("smallcnn", image_size, 16)  # two (conv, conv, pool) stages leave a side >= 1
    _check_rate("smallcnn", drop_rate)
    side = ((image_size - 4) // 2 - 4) // 2
    model = ImageClassifier(
        stem=nn.Identity(),
        stages=[_two_convs_pool(in_channels, 32), _two_convs_pool(32, 64)],
        neck=nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 200),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(200, 200),
            nn.ReLU(inplace=True),
        ),
        feature_dim=200,
        num_classes=num_classes,
        input_shape=(in_channels, image_size, image_size),
    )
    _init_trades(model)
    return model


def _init_trades(model: ImageClassifier) -> None:
    """TRADES' initialisation: He-normal (fan-in) conv kernels, zero conv biases, a zero head."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
