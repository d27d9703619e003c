"""Certified robustness of the mixed classifier (l2), derivations in docs/robust.md.

For a constant alpha = a and m = (1 - a) / a, the mix keeps the robust model's class y at
x + delta whatever the standard model does as long as h_y(x+delta) - h_i(x+delta) > m for
every i != y. Two ways to guarantee that:
- each p^h_i is L-Lipschitz: r = max(0, a mu + a - 1) / (2 a L), mu = p^h_y - max_i p^h_i
  (for a smoothed base L = 1 / (sigma sqrt(2 pi)));
- h is Gaussian randomized smoothing with noise sigma (Cohen et al. 2019): Phi^-1 of any
  smoothed [0, 1]-valued function is 1/sigma-Lipschitz (Salman et al. 2019), applied to
  h_y / (1 + m) and (h_i + m) / (1 + m):
  r = sigma / 2 * max(0, PhiInv(pA / (1 + m)) - PhiInv((pB + m) / (1 + m))),
  with pA a lower and pB = 1 - pA an upper confidence bound; a = 1 gives Cohen's sigma PhiInv(pA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.stats import norm
from torch import Tensor, nn

from trustvision.robust.stats import lower_confidence_bound

# Times 1/sigma: the l2 Lipschitz bound of a smoothed map f: R^d -> [0, 1]. Its gradient is
# E[f(x + eps) eps] / sigma^2 = E[(f(x + eps) - 1/2) eps] / sigma^2 (E eps = 0), so along a unit u
# it is at most E|<u, eps>| / (2 sigma^2) = 1 / (sigma sqrt(2 pi)): half of Salman et al.'s
# sqrt(2/pi) / sigma, reached by a half-space indicator.
SMOOTHING_LIPSCHITZ = 1 / math.sqrt(2 * math.pi)


def _m(alpha: float) -> float:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"a certificate needs alpha in (0, 1], got {alpha}")
    return (1 - alpha) / alpha


def lipschitz_radius(margin: Tensor | float, *, alpha: float, lipschitz: float) -> Tensor:
    """r = max(0, a mu + a - 1) / (2 a L) for the robust model's margin mu = p_y - max_i p_i."""
    _m(alpha)  # checks alpha
    mu = torch.as_tensor(margin, dtype=torch.float64)
    return torch.clamp(alpha * mu + alpha - 1, min=0.0) / (2 * alpha * lipschitz)


def smoothing_radius(p_a: float, p_b: float, *, alpha: float, sigma: float) -> float:
    """sigma/2 * max(0, PhiInv(pA/(1+m)) - PhiInv((pB+m)/(1+m))), m = (1 - a)/a."""
    m = _m(alpha)
    low = norm.ppf(p_a / (1 + m))
    high = norm.ppf((p_b + m) / (1 + m))
    value = sigma / 2 * (low - high)
    return float(value) if math.isfinite(value) and value > 0 else 0.0


def probability_margin(probs: Tensor) -> tuple[Tensor, Tensor]:
    """(predicted class, p_y - max_{i != y} p_i) of each row of probabilities."""
    top = probs.topk(2, dim=1)
    return top.indices[:, 0], top.values[:, 0] - top.values[:, 1]


@torch.no_grad()
def noise_counts(
    model: nn.Module, x: Tensor, *, sigma: float, samples: int, batch_size: int = 500
) -> Tensor:
    """(C,) counts of the classes `model` predicts on x + N(0, sigma^2 I), one image x (C,H,W)."""
    counts: Tensor | None = None
    left = samples
    while left > 0:
        take = min(batch_size, left)
        batch = x.unsqueeze(0).expand(take, *x.shape)
        logits = model(batch + sigma * torch.randn_like(batch))
        found = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).cpu()
        counts = found if counts is None else counts + found
        left -= take
    assert counts is not None
    return counts


@dataclass(frozen=True)
class SmoothedCertificate:
    """Cohen et al.'s CERTIFY for one image: the class, its lower bound pA and the votes."""

    label: int
    predicted: int  # -1 when pA <= 1/2 (Cohen abstains)
    p_a: float
    counts: list[int]  # votes of the estimation samples


def certify_smoothed(
    model: nn.Module,
    x: Tensor,
    y: int,
    *,
    sigma: float,
    n0: int,
    n: int,
    confidence: float,
    batch_size: int = 500,
) -> SmoothedCertificate:
    """Pick the top class with n0 samples, bound its probability with n fresh ones."""
    guess = int(noise_counts(model, x, sigma=sigma, samples=n0, batch_size=batch_size).argmax())
    counts = noise_counts(model, x, sigma=sigma, samples=n, batch_size=batch_size)
    p_a = lower_confidence_bound(int(counts[guess]), n, alpha=confidence)
    return SmoothedCertificate(
        label=y, predicted=guess if p_a > 0.5 else -1, p_a=p_a, counts=counts.tolist()
    )


def mixed_radii(cert: SmoothedCertificate, *, alpha: float, sigma: float) -> dict[str, float]:
    """Both radii of the mix at `alpha` from one smoothing certificate (0: not certified)."""
    if cert.predicted < 0:
        return {"tight": 0.0, "lipschitz": 0.0}
    p_b = 1.0 - cert.p_a
    lipschitz = float(
        lipschitz_radius(cert.p_a - p_b, alpha=alpha, lipschitz=SMOOTHING_LIPSCHITZ / sigma)
    )
    return {
        "tight": smoothing_radius(cert.p_a, p_b, alpha=alpha, sigma=sigma),
        "lipschitz": lipschitz,
    }


def certified_accuracy(radii: list[float], correct: list[bool], grid: list[float]) -> list[float]:
    """Fraction of images certified correct (radius > 0 and >= r) at each radius r of `grid`."""
    n = max(len(radii), 1)
    return [
        sum(ok and rad > 0 and rad >= r for rad, ok in zip(radii, correct, strict=True)) / n
        for r in grid
    ]
