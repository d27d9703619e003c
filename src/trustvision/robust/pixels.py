"""Pixel-space models: attacks and AutoAttack see images in [0, 1]; normalisation lives inside."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn

from trustvision.config import ModelConfig
from trustvision.models import create_model_for
from trustvision.models.base import ImageClassifier


class Normalized(nn.Module):
    """An ImageClassifier that takes [0, 1] pixels: `(x - mean) / std` happens in `forward`.

    Its state dict holds the classifier's weights under `net.` and the two statistics, so a
    saved robust model carries its own normalisation.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self, net: ImageClassifier, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        super().__init__()
        self.net = net
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def normalize(self, x: Tensor) -> Tensor:
        """[0, 1] pixels to the classifier's input scale."""
        return (x - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        """Logits of [0, 1] pixels."""
        return self.net(self.normalize(x))

    def forward_with_maps(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and every stage's feature maps from one pass (the mixing network reads both)."""
        maps = self.net.feature_maps(self.normalize(x))
        return self.net.head(self.net.neck(maps[-1])), maps

    def num_parameters(self) -> int:
        """Number of parameters of the classifier."""
        return self.net.num_parameters()


def freeze(model: nn.Module) -> nn.Module:
    """Evaluation mode and no parameter gradients: a base model inside a mix never trains."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer: where its inputs must go."""
    return next(itertools.chain(model.parameters(), model.buffers())).device


@torch.no_grad()
def logits_of(model: nn.Module, x: Tensor, *, batch_size: int = 500) -> Tensor:
    """Logits of `x`, computed in batches on the model's device, returned on the CPU."""
    device = device_of(model)
    return torch.cat(
        [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    )


def build_pixel_model(
    model: ModelConfig, *, num_classes: int, image_shape: tuple[int, ...], mean: Any, std: Any
) -> Normalized:
    """The config's architecture wrapped to take [0, 1] pixels."""
    net = create_model_for(
        model.name, num_classes=num_classes, image_shape=image_shape, **model.kwargs
    )
    return Normalized(net, tuple(mean), tuple(std))
