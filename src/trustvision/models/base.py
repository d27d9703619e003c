"""The contract every model keeps: `features(x) -> (B, d)`, `head`, `forward = head(features)`.

A model is a stem, a sequence of stages, a neck that turns the last stage's maps into the
feature vector, and a linear head. Federated, compact and robust code relies only on the
methods below, never on the attribute names of one architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from trustvision.errors import ConfigError


class ImageClassifier(nn.Module):
    """stem -> stages -> neck (features, (B, feature_dim)) -> head (logits).

    `input_shape` is the (C, H, W) the model was built for: its natural input size, used to
    make dummy inputs (export, MACs). Convolutional-only models accept other sizes as well.
    """

    def __init__(
        self,
        *,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        neck: nn.Module,
        feature_dim: int,
        num_classes: int,
        input_shape: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.neck = neck
        self.feature_dim = feature_dim
        self.input_shape = input_shape
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        """Number of outputs of the head."""
        return self.head.out_features

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The output of every stage, from input to output."""
        maps = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def features(self, x: Tensor) -> Tensor:
        """Post-ReLU pooled features, (B, feature_dim)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.neck(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits: `head(features(x))`."""
        return self.head(self.features(x))

    def layer_groups(self) -> list[nn.Module]:
        """Parameter-holding groups from input to output; the last is the head."""
        body = [self.stem, *self.stages, self.neck]
        return [m for m in body if any(True for _ in m.parameters())] + [self.head]

    def reset_head(self, num_classes: int, *, bias: bool = True) -> None:
        """Replace the head by a fresh Linear(feature_dim, num_classes) on the same device."""
        old = self.head.weight
        self.head = nn.Linear(
            self.feature_dim, num_classes, bias=bias, device=old.device, dtype=old.dtype
        )

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        """Number of parameters (only those with requires_grad when `trainable_only`)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def init_conv_bn(module: nn.Module) -> None:
    """He-normal (fan-out) conv kernels and unit-scale, zero-shift norms, as in He et al. 2016."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def pooled_features() -> nn.Sequential:
    """Global average pool and flatten: (B, C, H, W) -> (B, C)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def check_image_size(model: str, image_size: int, minimum: int) -> None:
    """A ConfigError unless `image_size` is an integer of at least `minimum`."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < minimum:
        raise ConfigError(f"model `{model}` needs `image_size` >= {minimum}, got `{image_size}`")
