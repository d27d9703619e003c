"""Our training attacks and adversarial objectives: stronger loss, inside the ball and the box."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustvision.models import create_model
from trustvision.robust.adversarial import Ramp, make_objective
from trustvision.robust.attacks import cross_entropy_loss, fgsm_rs, pgd
from trustvision.robust.config import AttackConfig
from trustvision.robust.pixels import Normalized

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = create_model("smallcnn", num_classes=10, in_channels=1, image_size=16)
    for m in net.modules():  # a non-zero head, so the loss has a gradient to follow
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1)
    return Normalized(net, (0.5,), (0.25,)).eval()


def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 16, 16, generator=generator)
    x[:4] = x[:4].round()  # some pixels exactly at 0 and 1: the box constraint is active
    return x, torch.randint(0, 10, (n,), generator=generator)


def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_pgd_increases_loss_and_stays_in_ball_and_box(norm, eps):
    model, (x, y) = tiny_model(), batch()
    adv = pgd(cross_entropy_loss(model), x, y, eps=eps, step_size=eps / 4, steps=10, norm=norm)
    assert mean_loss(model, adv, y) > mean_loss(model, x, y) + 0.05
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_pgd_per_sample_budgets_are_respected():
    model, (x, y) = tiny_model(), batch()
    eps = torch.linspace(0.0, 0.2, len(y))
    adv = pgd(cross_entropy_loss(model), x, y, eps=eps, step_size=eps / 4, steps=5)
    assert ((adv - x).flatten(1).abs().amax(1) <= eps + 1e-6).all()


def test_fgsm_rs_increases_loss_and_stays_in_ball_and_box():
    model, (x, y) = tiny_model(), batch()
    torch.manual_seed(0)
    adv = fgsm_rs(cross_entropy_loss(model), x, y, eps=0.1, step_size=0.125)
    assert mean_loss(model, adv, y) > mean_loss(model, x, y)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_attacks_leave_parameter_gradients_alone():
    model, (x, y) = tiny_model(), batch()
    pgd(cross_entropy_loss(model), x, y, eps=0.1, step_size=0.05, steps=2)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["standard", "pgd", "trades", "fgsm_rs", "gaussian"])
def test_objectives_return_a_differentiable_loss_and_keep_the_mode(method):
    model, (x, y) = tiny_model(), batch()
    model.train()
    cfg = AttackConfig(method=method, eps=0.1, steps=2)
    loss, logits = make_objective(cfg)(model, x, y)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logits.shape == (len(y), 10)
    assert model.training  # crafted in eval mode, handed back in training mode
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_eps_ramp_grows_linearly_per_step_and_resumes_by_epoch():
    ramp = Ramp(epochs=2, steps_per_epoch=4)
    first = [ramp.next() for _ in range(4)]
    assert first == pytest.approx([0.125, 0.25, 0.375, 0.5])
    ramp.start_epoch(1)  # a resumed run starts at epoch 1 with the same multipliers
    assert ramp.next() == pytest.approx(0.625)
    ramp.start_epoch(5)
    assert ramp.next() == 1.0
