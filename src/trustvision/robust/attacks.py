"""Our own training-time attacks: PGD (l_inf, l_2) and FGSM with a random start, in pixel space.

These are the hot path of adversarial training, so they are plain batched tensor code. An
attack maximises a per-sample loss `loss_fn(x_adv, y) -> (B,)` that calls the model itself,
so the same PGD attacks a base model, a mixed classifier or the mixing network's gamma.
Evaluation uses AutoAttack's attacks instead (robust/evaluate.py), never these alone.
Randomness comes from torch's global generator, which `fit` reseeds every epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustvision.robust.config import Norm

LossFn = Callable[[Tensor, Tensor], Tensor]  # (x_adv, y) -> per-sample loss to maximise


def _per_sample(value: float | Tensor, x: Tensor) -> Tensor:
    """A scalar or (B,) budget as a (B, 1, 1, 1) tensor on x's device."""
    value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return value.reshape(-1, *([1] * (x.ndim - 1)))


def _l2_norm(delta: Tensor) -> Tensor:
    """Per-sample l2 norm, shaped (B, 1, 1, 1)."""
    return delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (delta.ndim - 1)))


def project(delta: Tensor, x: Tensor, *, eps: Tensor, norm: Norm) -> Tensor:
    """Project `delta` onto the eps-ball of `norm`, then so that x + delta stays in [0, 1]."""
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
    else:
        delta = delta * torch.clamp(eps / _l2_norm(delta), max=1.0)
    # Clipping to the image box only shrinks every coordinate, so the ball is kept.
    return (x + delta).clamp(0.0, 1.0) - x


def random_start(x: Tensor, *, eps: Tensor, norm: Norm) -> Tensor:
    """A uniform draw from the l_inf ball, or a random direction at a random radius for l_2."""
    if norm == "linf":
        delta = (torch.rand_like(x) * 2 - 1) * eps
    else:
        direction = torch.randn_like(x)
        radius = torch.rand(x.shape[0], device=x.device, dtype=x.dtype)
        delta = direction / _l2_norm(direction) * _per_sample(radius, x) * eps
    return project(delta, x, eps=eps, norm=norm)


def _ascent_step(grad: Tensor, *, step: Tensor, norm: Norm) -> Tensor:
    if norm == "linf":
        return step * grad.sign()
    return step * grad / _l2_norm(grad)


def input_gradient(loss_fn: LossFn, x_adv: Tensor, y: Tensor) -> Tensor:
    """d sum(loss_fn(x_adv, y)) / d x_adv, leaving parameter gradients untouched."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(x_adv, y).sum()
        (grad,) = torch.autograd.grad(loss, [x_adv])
    return grad


def pgd(
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    step_size: float | Tensor,
    steps: int,
    norm: Norm = "linf",
    start: Tensor | None = None,
    momentum: float | Tensor = 0.0,
) -> Tensor:
    """Projected gradient ascent on `loss_fn` from a random start (or `start`); returns x_adv.

    `eps`, `step_size` and `momentum` are scalars or per-sample (B,) tensors. With momentum
    mu the ascent direction is the gradient plus mu times the previous direction.
    """
    x = x.detach()
    eps_t, step_t = _per_sample(eps, x), _per_sample(step_size, x)
    mu = _per_sample(momentum, x)
    delta = random_start(x, eps=eps_t, norm=norm) if start is None else (start - x).detach()
    velocity = torch.zeros_like(x)
    for _ in range(steps):
        velocity = input_gradient(loss_fn, x + delta, y) + mu * velocity
        delta = project(
            delta + _ascent_step(velocity, step=step_t, norm=norm), x, eps=eps_t, norm=norm
        )
    return (x + delta).detach()


def fgsm_rs(
    loss_fn: LossFn, x: Tensor, y: Tensor, *, eps: float | Tensor, step_size: float | Tensor
) -> Tensor:
    """FGSM from a uniform random start (Wong et al. 2020): one l_inf step of `step_size`."""
    return pgd(loss_fn, x, y, eps=eps, step_size=step_size, steps=1, norm="linf")


def cross_entropy_loss(model: nn.Module) -> LossFn:
    """Per-sample cross-entropy of `model`'s logits."""
    return lambda x, y: F.cross_entropy(model(x), y, reduction="none")


def dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted difference-of-logits ratio (Croce & Hein 2020), to maximise; needs >= 4 classes."""
    ordered = logits.sort(dim=1).values
    rows = torch.arange(len(y), device=logits.device)
    scale = ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12
    return -(logits[rows, y] - logits[rows, target]) / scale


def kl_to_clean(model: nn.Module, clean_log_probs: Tensor) -> LossFn:
    """Per-sample KL(p(x) || p(x_adv)): the inner loss of TRADES."""
    clean = clean_log_probs.detach()

    def loss(x: Tensor, _y: Tensor) -> Tensor:
        adv = F.log_softmax(model(x), dim=1)
        return F.kl_div(adv, clean, reduction="none", log_target=True).sum(dim=1)

    return loss
