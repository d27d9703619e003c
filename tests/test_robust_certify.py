"""Certified radii of the mix: a brute-force attack never flips a prediction inside the radius."""

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from scipy.stats import norm
from torch import nn

from trustvision.robust.attacks import pgd
from trustvision.robust.certify import (
    SMOOTHING_LIPSCHITZ,
    SmoothedCertificate,
    certified_accuracy,
    certify_smoothed,
    lipschitz_radius,
    mixed_radii,
    probability_margin,
    smoothing_radius,
)
from trustvision.robust.config import CertifySettings

TEMPERATURE = 3.0


pytestmark = pytest.mark.usefixtures("one_thread")


class Linear(nn.Module):
    """h(x) = W x + b on flattened inputs: each softmax output has a known l2 Lipschitz bound."""

    def __init__(self, dim: int, classes: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(
            torch.randn(classes, dim, generator=generator), requires_grad=False
        )
        self.bias = nn.Parameter(torch.randn(classes, generator=generator), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def softmax_lipschitz(model: Linear, temperature: float) -> float:
    """||grad_z p_i||_2 <= sqrt(2) p_i (1 - p_i) <= sqrt(2)/4, times the logits' bound s ||W||_2."""
    return math.sqrt(2) / 4 * temperature * torch.linalg.matrix_norm(model.weight, ord=2).item()


class WorstStandard(nn.Module):
    """A hostile standard model: all its mass on the robust model's runner-up class."""

    def __init__(self, robust: nn.Module) -> None:
        super().__init__()
        self.robust = robust

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.robust(x).detach()
        top = F.one_hot(logits.argmax(1), logits.shape[1]).bool()
        return 50.0 * torch.softmax(logits.masked_fill(top, -1e9), 1)


def mixed(h: nn.Module, g: nn.Module, alpha: float) -> nn.Module:
    class Mix(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = (1 - alpha) * F.softmax(g(x), 1) + alpha * F.softmax(TEMPERATURE * h(x), 1)
            return torch.log(p)

    return Mix()


def flip_loss(model: nn.Module, label: torch.Tensor):
    """Best other class minus the certified class: positive means the prediction flipped."""

    def loss(x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        out = model(x)
        others = out.masked_fill(F.one_hot(label, out.shape[1]).bool(), -math.inf)
        return others.max(1).values - out.gather(1, label[:, None])[:, 0]

    return loss


def flips_within(model: nn.Module, x, label, radius, *, samples: int = 200) -> int:
    """Predictions changed by l2 PGD or by random points on the sphere of each radius."""
    radius = torch.as_tensor(radius, dtype=x.dtype)
    adv = pgd(
        flip_loss(model, label), x, label, eps=radius, step_size=radius / 5, steps=30, norm="l2"
    )
    found = model(adv).argmax(1) != label
    noise = torch.randn(samples, *x.shape[1:])
    noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    # no box here: the toy model takes any input
    points = x[:, None] + radius.view(-1, 1, 1, 1, 1) * noise[None]
    pred = model(points.flatten(0, 1)).argmax(1).view(len(x), samples)
    found |= (pred != label[:, None]).any(1)
    return int(found.sum())


@pytest.mark.parametrize("alpha", [1.0, 0.8, 0.65])
def test_lipschitz_radius_survives_a_brute_force_attack(alpha):
    torch.manual_seed(0)
    h = Linear(dim=8, classes=4, seed=1)
    g = WorstStandard(h)
    lipschitz = softmax_lipschitz(h, TEMPERATURE)
    x = torch.rand(300, 1, 2, 4)  # pixels: PGD keeps to the [0, 1] box, the sphere samples do not
    pred, margin = probability_margin(F.softmax(TEMPERATURE * h(x), 1))
    radius = lipschitz_radius(margin, alpha=alpha, lipschitz=lipschitz).float()
    keep = radius > 0
    assert keep.sum() >= 20  # enough certified points to test
    model = mixed(h, g, alpha)
    assert (model(x[keep]).argmax(1) == pred[keep]).all()
    assert flips_within(model, x[keep], pred[keep], 0.999 * radius[keep]) == 0
    # the same attack does find flips far outside the radius: it is not a toothless check
    assert flips_within(model, x[keep], pred[keep], 20 * radius[keep] + 0.5) > 0


def test_lipschitz_radius_formula():
    # certified only where mu > (1 - a) / a
    assert lipschitz_radius(0.25, alpha=0.8, lipschitz=1.0).item() == 0.0
    assert lipschitz_radius(0.5, alpha=0.8, lipschitz=2.0).item() == pytest.approx(
        (0.8 * 0.5 + 0.8 - 1) / (2 * 0.8 * 2.0)
    )
    assert lipschitz_radius(0.6, alpha=1.0, lipschitz=1.0).item() == pytest.approx(0.3)


@pytest.mark.parametrize("p_a", [0.6, 0.9, 0.999])
def test_smoothing_radius_reduces_to_cohen_at_alpha_1(p_a):
    sigma = 0.5
    assert smoothing_radius(p_a, 1 - p_a, alpha=1.0, sigma=sigma) == pytest.approx(
        sigma * norm.ppf(p_a)
    )


def test_smoothing_radius_is_sound_and_shrinks_with_alpha_on_an_exact_linear_model():
    # Two classes, h(x) = 1[w.x > 0]: the smoothed probability is Phi(w.x / (sigma |w|)) exactly,
    # and along -w the mix (worst-case standard model) keeps class 1 while
    # Phi(t - d / sigma) > (1 + m) / 2, i.e. up to d = sigma (t - PhiInv((1 + m) / 2)).
    sigma = 0.5
    radii = []
    for alpha in (1.0, 0.9, 0.75, 0.6):
        m = (1 - alpha) / alpha
        for p_a in (0.7, 0.9, 0.99, 0.9999):
            exact = max(0.0, sigma * (norm.ppf(p_a) - norm.ppf((1 + m) / 2)))
            bound = smoothing_radius(p_a, 1 - p_a, alpha=alpha, sigma=sigma)
            assert bound <= exact + 1e-9
            if alpha == 1.0:
                assert bound == pytest.approx(exact)
        radii.append(smoothing_radius(0.99, 0.01, alpha=alpha, sigma=sigma))
    assert radii == sorted(radii, reverse=True) and radii[-1] > 0
    # certified only where pA - pB > m
    assert smoothing_radius(0.7, 0.3, alpha=0.6, sigma=sigma) == 0.0


def test_smoothing_certificate_of_a_constant_model_is_as_large_as_n_allows():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    nn.init.zeros_(model[1].weight)
    model[1].bias.data = torch.tensor([5.0, 0.0, 0.0])
    cert = certify_smoothed(
        model, torch.zeros(1, 2, 2), 0, sigma=0.25, n0=10, n=100, confidence=0.001
    )
    assert cert.predicted == 0 and cert.counts == [100, 0, 0]
    assert cert.p_a == pytest.approx(0.001 ** (1 / 100))
    radii = mixed_radii(cert, alpha=1.0, sigma=0.25)
    assert radii["tight"] == pytest.approx(0.25 * norm.ppf(cert.p_a))
    assert 0 < radii["lipschitz"] < radii["tight"]  # at alpha 1 the Lipschitz route is looser
    # mu = 2 pA - 1 and L = 1 / (sigma sqrt(2 pi)): r = mu sigma sqrt(2 pi) / 2
    assert radii["lipschitz"] == pytest.approx(
        (2 * cert.p_a - 1) * 0.25 * math.sqrt(2 * math.pi) / 2
    )


def test_the_smoothed_lipschitz_bound_is_reached_by_a_half_space():
    """A smoothed half-space indicator's slope at its edge is 1 / (sigma sqrt(2 pi)): the bound
    is the best one, and a smaller constant would certify radii that are not safe."""
    sigma, h = 0.5, 1e-3
    slope = (norm.cdf(h / sigma) - norm.cdf(-h / sigma)) / (2 * h)  # E 1[x + eps > 0] at x = +-h
    assert slope == pytest.approx(SMOOTHING_LIPSCHITZ / sigma, rel=1e-5)


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"confidence": 0.999}, "less than 0.5"),
        ({"alphas": (0.0, 1.0)}, r"non-empty list in \(0, 1\]"),
        ({"alphas": ()}, "non-empty"),
        ({"alphas": (0.9, 0.90000001)}, "print alike"),
    ],
)
def test_certify_settings_that_would_fail_after_the_work_are_refused(settings, said):
    with pytest.raises(ValidationError, match=said):
        CertifySettings(**settings)


def test_abstain_and_certified_accuracy_curve():
    cert = SmoothedCertificate(label=0, predicted=-1, p_a=0.4, counts=[40, 60])
    assert mixed_radii(cert, alpha=0.9, sigma=0.5) == {"tight": 0.0, "lipschitz": 0.0}
    curve = certified_accuracy([0.0, 0.2, 0.5, 0.5], [True, True, False, True], [0.0, 0.3, 0.6])
    assert curve == [0.5, 0.25, 0.0]
