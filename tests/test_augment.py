"""Batched augmentations: seeded, shape-preserving, and equal to per-sample reference code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from trustvision.data.augment import (
    AugmentConfig,
    BatchAugment,
    random_affine,
    random_brightness,
    random_crop,
    random_hflip,
)

ALL_ON = AugmentConfig(
    crop_padding=2, hflip=True, rotation=15, zoom=0.1, translate=0.1, brightness=0.2
)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _images(b: int = 8, c: int = 3, h: int = 12, w: int = 10, **kw) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=_gen(123), **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_are_kept(device: str, dtype: torch.dtype) -> None:
    x = _images(dtype=dtype).to(device)

    out = BatchAugment(ALL_ON)(x, _gen(0, device))

    assert out.shape == x.shape
    assert out.dtype == dtype
    assert out.device == x.device


def test_same_seed_same_output_different_seed_differs() -> None:
    x = _images()
    augment = BatchAugment(ALL_ON)

    first, again, other = (augment(x, _gen(s)) for s in (7, 7, 8))

    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_crop_matches_per_sample_reference() -> None:
    x, padding = _images(b=6, h=5, w=4), 2

    out = random_crop(x, padding=padding, generator=_gen(3))

    offsets = torch.randint(0, 2 * padding + 1, (6, 2), generator=_gen(3))
    padded = F.pad(x, (padding,) * 4)
    for b, (i, j) in enumerate(offsets.tolist()):
        assert torch.equal(out[b], padded[b, :, i : i + 5, j : j + 4])
    assert len({tuple(o) for o in offsets.tolist()}) > 1  # samples get their own offsets


def test_crop_without_padding_is_identity() -> None:
    x = _images()
    assert torch.equal(random_crop(x, padding=0, generator=_gen(0)), x)


def test_hflip_flips_exactly_the_masked_samples() -> None:
    x = _images(b=16)

    out = random_hflip(x, generator=_gen(5))

    mask = torch.rand(16, generator=_gen(5)) < 0.5
    assert 0 < int(mask.sum()) < 16
    for b in range(16):
        assert torch.equal(out[b], x[b].flip(2) if mask[b] else x[b])


def test_affine_with_zero_ranges_is_identity() -> None:
    x = _images()

    out = random_affine(x, degrees=0, zoom=0, translate=0, generator=_gen(0))

    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_affine_moves_pixels_and_stays_in_range() -> None:
    x = _images()

    out = random_affine(x, degrees=30, zoom=0.2, translate=0.2, generator=_gen(0))

    assert not torch.allclose(out, x, atol=1e-2)
    assert out.min() >= 0 and out.max() <= 1


def test_affine_shift_of_a_whole_pixel() -> None:
    # With translate = 1/W the largest shift is one pixel; a constant image then keeps its
    # value everywhere except at most one zero-filled column per side.
    x = torch.ones(4, 1, 8, 8)

    out = random_affine(x, degrees=0, zoom=0, translate=1 / 8, generator=_gen(1))

    torch.testing.assert_close(out[:, :, 1:-1, 1:-1], x[:, :, 1:-1, 1:-1])


def test_brightness_adds_one_shift_per_sample_and_clamps() -> None:
    mid = 0.4 + 0.2 * _images()  # pixels in [0.4, 0.6]: a shift of 0.3 never clamps

    shifted = random_brightness(mid, delta=0.3, generator=_gen(2)) - mid
    clamped = random_brightness(_images(), delta=1.0, generator=_gen(2))

    per_sample = shifted.flatten(1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample))
    assert per_sample.abs().max() <= 0.3
    assert clamped.min() >= 0 and clamped.max() <= 1


def test_nothing_enabled_is_identity() -> None:
    x = _images()
    augment = BatchAugment(AugmentConfig())

    assert not augment.enabled
    assert augment(x, _gen(0)) is x


@pytest.mark.parametrize(
    "field",
    [{"crop_padding": 4}, {"hflip": True}, {"rotation": 5}, {"zoom": 0.1}, {"brightness": 0.1}],
)
def test_each_option_enables(field: dict) -> None:
    assert BatchAugment(AugmentConfig(**field)).enabled


@pytest.mark.parametrize(
    "bad",
    [{"crop_padding": -1}, {"zoom": 1.0}, {"translate": -0.1}, {"brightness": -1}, {"blur": 1}],
)
def test_config_rejects_bad_values_and_unknown_keys(bad: dict) -> None:
    with pytest.raises(ValidationError):
        AugmentConfig(**bad)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        ALL_ON.hflip = False


def test_rotation_turns_pixels_on_a_non_square_image() -> None:
    # A dot 10 px right of the centre ends up at 10 px in the direction of the drawn angle
    # (the first of the four U(-1, 1) draws per sample, times `degrees`).
    x = torch.zeros(1, 1, 21, 41)
    x[0, 0, 10, 30] = 1.0

    out = random_affine(x, degrees=90, zoom=0, translate=0, generator=_gen(1))

    angle = (torch.rand(1, 4, generator=_gen(1))[0, 0] * 2 - 1) * torch.pi / 2
    rows, cols = torch.meshgrid(torch.arange(21.0), torch.arange(41.0), indexing="ij")
    mass = out[0, 0].sum()
    centre = torch.stack(
        [(out[0, 0] * cols).sum() - 20 * mass, (out[0, 0] * rows).sum() - 10 * mass]
    )
    expected = 10 * torch.stack([torch.cos(angle), torch.sin(angle)])
    torch.testing.assert_close(centre / mass, expected, atol=0.1, rtol=0)
