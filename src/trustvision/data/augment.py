"""Batched augmentation: small pure functions on float (B, C, H, W) batches with pixels in [0, 1].

Each draws its per-sample randomness from a `torch.Generator` on the batch's device, so a
run is reproducible from its seed and the same code runs on the CPU and on CUDA. No
per-sample Python: every op is a few whole-batch tensor operations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from trustvision.config import AugmentConfig, DataConfig
from trustvision.data.catalog import CATALOG
from trustvision.errors import ConfigError


def _uniform(x: Tensor, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """U(-1, 1) draws on x's device."""
    return torch.rand(shape, device=x.device, generator=generator) * 2 - 1


def random_crop(x: Tensor, *, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad by `padding` pixels, then crop each sample back to (H, W) at a random offset."""
    b, c, h, w = x.shape
    if padding == 0:
        return x
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), device=x.device, generator=generator)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chans, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def random_hflip(x: Tensor, *, generator: torch.Generator) -> Tensor:
    """Mirror each sample left-right with probability 0.5 (one uniform draw per sample)."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def random_affine(
    x: Tensor, *, degrees: float, zoom: float, translate: float, generator: torch.Generator
) -> Tensor:
    """Per-sample rotation, zoom and shift in one affine_grid + grid_sample (zeros outside).

    Rotation in U(-degrees, degrees), scale in U(1 - zoom, 1 + zoom), shift along each axis
    in U(-translate, translate) times the image size; bilinear interpolation.
    """
    b, _, h, w = x.shape
    draws = _uniform(x, (b, 4), generator)
    angle = draws[:, 0] * math.radians(degrees)
    scale = 1 + draws[:, 1] * zoom
    shift = draws[:, 2:] * (2 * translate)  # normalised coordinates span 2 per image side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # affine_grid maps output to input coordinates: the inverse rotation and scale, with the
    # aspect ratio undone so a rotation stays a rotation in pixels on non-square images.
    linear = torch.stack(
        [torch.stack([cos, sin * h / w], dim=1), torch.stack([-sin * w / h, cos], dim=1)], dim=1
    )
    offset = -(linear @ shift.unsqueeze(2))
    theta = torch.cat([linear, offset], dim=2).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_brightness(x: Tensor, *, delta: float, generator: torch.Generator) -> Tensor:
    """Add U(-delta, delta) to every pixel of a sample (one draw per sample), clamp to [0, 1]."""
    shift = _uniform(x, (x.shape[0],), generator) * delta
    return (x + shift.view(-1, 1, 1, 1).to(x.dtype)).clamp(0.0, 1.0)


class BatchAugment:
    """The enabled ops of an AugmentConfig, in a fixed order: crop, flip, affine, brightness."""

    def __init__(self, config: AugmentConfig | None = None, *, key: str = "data.augment") -> None:
        self.config = config if config is not None else AugmentConfig()
        self.key = key  # where the config holds it, for errors

    @property
    def affine(self) -> bool:
        """Whether a rotation, zoom or translation is enabled."""
        c = self.config
        return c.rotation > 0 or c.zoom > 0 or c.translate > 0

    @property
    def enabled(self) -> bool:
        """Whether any op is enabled (otherwise a call returns its input)."""
        c = self.config
        return c.crop_padding > 0 or c.hflip or self.affine or c.brightness > 0

    def check_fits(self, height: int, width: int) -> None:
        """A ConfigError for a crop padding wider than the images (a crop of mostly zeros; a
        huge one asked torch for terabytes)."""
        padding = self.config.crop_padding
        if padding > min(height, width):
            raise ConfigError(
                f"`{self.key}.crop_padding={padding}` is wider than the {height}x{width} "
                f"images: use at most {min(height, width)} (4 is usual for 32x32)"
            )

    def check_fits_data(self, data: DataConfig) -> None:
        """`check_fits` before any work, where `data`'s image size is known without loading it
        (`data.image_size`, or the catalog's shape); a loader checks the images it is given."""
        shape = CATALOG[data.name].shape if data.name in CATALOG else None
        side = data.image_size or (shape[-1] if shape else None)
        if side is not None:
            self.check_fits(side, side)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment a batch; `generator` must live on x's device."""
        c = self.config
        if c.crop_padding > 0:
            x = random_crop(x, padding=c.crop_padding, generator=generator)
        if c.hflip:
            x = random_hflip(x, generator=generator)
        if self.affine:
            x = random_affine(
                x, degrees=c.rotation, zoom=c.zoom, translate=c.translate, generator=generator
            )
        if c.brightness > 0:
            x = random_brightness(x, delta=c.brightness, generator=generator)
        return x

    def __repr__(self) -> str:
        return f"BatchAugment({self.config!r})"
