"""Simplex equiangular tight frames and FedLoGe's static sparse ETF classifier (SSE-C).

Everything is computed on the CPU from one seed, so the same seed gives bit-identical
weights on every machine and device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trustvision.errors import ConfigError
from trustvision.train.recipe import torch_threads

ANGLE_EPS = 1e-5  # clamp of the nearest cosine before arccos, as the authors' code


def simplex_etf(dim: int, num_classes: int, *, generator: torch.Generator) -> Tensor:
    """(dim, C) simplex ETF: `sqrt(C/(C-1)) P (I - 11^T/C)`, P from the reduced QR of U[0,1)^{dxC}.

    Columns have unit norm and pairwise cosine -1/(C-1).
    """
    if num_classes < 2 or dim < num_classes:
        raise ConfigError(
            f"an ETF of {num_classes} classes needs a feature dimension >= {num_classes} and "
            f"at least 2 classes, got `feature_dim={dim}`: pick a wider model"
        )
    a = torch.rand(dim, num_classes, generator=generator, dtype=torch.float64)
    p, _ = torch.linalg.qr(a, mode="reduced")
    c = num_classes
    centre = torch.eye(c, dtype=torch.float64) - torch.full((c, c), 1.0 / c, dtype=torch.float64)
    return (math.sqrt(c / (c - 1)) * p @ centre).float()


def random_mask(shape: tuple[int, int], *, sparsity: float, generator: torch.Generator) -> Tensor:
    """A 0/1 float mask with exactly `floor(sparsity * numel)` zeros, placed uniformly at random."""
    numel = shape[0] * shape[1]
    mask = torch.ones(numel)
    mask[torch.randperm(numel, generator=generator)[: int(sparsity * numel)]] = 0.0
    return mask.view(shape)


def sse_c_loss(weight: Tensor, *, norm_target: float) -> Tensor:
    """`sum_c (||w_c|| - target)^2 - mean_c arccos(max_{j != c} cos(w_c, w_j))` over columns w_c."""
    norms = weight.norm(dim=0)
    unit = weight / norms
    cos = unit.T @ unit
    eye = torch.eye(cos.shape[0], dtype=torch.bool)
    nearest = cos.masked_fill(eye, -2.0).max(dim=1).values
    angle = torch.arccos(nearest.clamp(-1 + ANGLE_EPS, 1 - ANGLE_EPS))
    return (norms - norm_target).pow(2).sum() - angle.mean()


def sparse_etf(
    dim: int,
    num_classes: int,
    *,
    sparsity: float,
    norm_target: float,
    steps: int,
    lr: float,
    seed: int,
) -> Tensor:
    """SSE-C as a (dim, C) matrix: an ETF with a random `sparsity` of entries zeroed, the rest
    re-optimised with Adam (gradient times mask) on `sse_c_loss`."""
    generator = torch.Generator().manual_seed(seed)
    etf = simplex_etf(dim, num_classes, generator=generator)
    mask = random_mask((dim, num_classes), sparsity=sparsity, generator=generator)
    if (mask.sum(dim=0) == 0).any():
        raise ConfigError(
            f"`sparsity={sparsity}` zeroes a whole class vector at `feature_dim={dim}`: lower it"
        )
    weight = (etf * mask).requires_grad_(True)
    optimizer = torch.optim.Adam([weight], lr=lr)
    # Tiny (d x C) ops: on a busy machine thread hand-offs cost more than they split (1,000
    # SSE-C steps took 17 s with two threads and 0.6 s with one on a loaded 2-core box).
    with torch_threads(1):
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=False)
            sse_c_loss(weight, norm_target=norm_target).backward()
            assert weight.grad is not None
            weight.grad.mul_(mask)
            optimizer.step()
    return (weight.detach() * mask).contiguous()


def etf_geometry(weight: Tensor) -> dict[str, float]:
    """Class-vector norms, pairwise angles (degrees) and the fraction of zero entries.

    `weight` is a Linear layer's (C, d) weight: one row per class.
    """
    w = weight.detach().double().cpu()
    norms = w.norm(dim=1)
    unit = w / norms[:, None]
    cos = (unit @ unit.T).clamp(-1.0, 1.0)
    off = ~torch.eye(len(w), dtype=torch.bool)
    angles = torch.rad2deg(torch.arccos(cos[off]))
    return {
        "norm_mean": float(norms.mean()),
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "angle_mean": float(angles.mean()),
        "angle_min": float(angles.min()),
        "sparsity": float((w == 0).double().mean()),
    }
