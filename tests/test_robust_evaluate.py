"""AutoAttack through our wrapper, the adaptive attack, the model card and the masking checks."""

import pytest
import torch
import torch.nn.functional as F
from robust_toys import toy_base
from torch import nn

from trustvision.robust.autoattack import (
    AdaptiveAPGD,
    attack_chunk,
    autoattack_flags,
    build_attackers,
    gate_under_attack,
)
from trustvision.robust.card import MODEL_INFO_FIELDS, eps_text, model_info
from trustvision.robust.config import APGDSettings, EvalSettings
from trustvision.robust.evaluate import (
    attack_report,
    check_autoattack_vs_pgd,
    check_eps_growth,
    check_square,
    clean_correct,
)
from trustvision.robust.mixing import MixedClassifier, build_adaptive
from trustvision.robust.pixels import Normalized

pytestmark = pytest.mark.usefixtures("one_thread")


def base(seed: int) -> Normalized:
    return toy_base(seed).eval()


def labelled(model: nn.Module, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and the model's own predictions as labels: all clean-correct."""
    x = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return x, model(x).argmax(1)


FAST = APGDSettings(attacks=["apgd-ce", "apgd-t"], n_iter=5, n_target_classes=2, batch_size=50)


def test_autoattack_runs_on_a_mix_that_returns_one_tensor():
    mix = MixedClassifier(base(0), base(1), alpha=0.6).eval()
    x, y = labelled(mix)
    assert isinstance(mix(x), torch.Tensor)  # not a tuple: AutoAttack can use it as is
    attackers = build_attackers(mix, eps=0.3, version="custom", custom=FAST)
    result = attack_chunk(attackers, x, y, batch_size=50)
    assert result.clean_correct == [True] * len(y)
    assert set(result.fooled_by) <= {None, "apgd-ce", "apgd-t"}
    assert sum(f is not None for f in result.fooled_by) > 0  # eps 0.3 on random nets: fooled
    assert set(result.seconds) == {"apgd-ce", "apgd-t"}


def test_attacks_stop_once_too_few_points_are_left_and_the_count_is_an_upper_bound():
    mix = MixedClassifier(base(0), base(1), alpha=0.6).eval()
    x, y = labelled(mix)
    attackers = build_attackers(mix, eps=0.3, version="custom", custom=FAST)
    full = attack_chunk(attackers, x, y, batch_size=50)
    short = attack_chunk(attackers, x, y, batch_size=50, stop_below=len(y))
    assert "apgd-ce" in short.seconds and short.skipped == ["apgd-t"]
    assert "apgd-t" not in short.seconds and full.skipped == []
    robust = sum(f is None for f in full.fooled_by)
    assert sum(f is None for f in short.fooled_by) >= robust


def test_standard_version_has_autoattacks_settings():
    attackers = build_attackers(base(0), eps=8 / 255, version="standard")
    assert attackers.order == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert attackers.attacks["apgd-ce"].n_iter == 100
    assert attackers.attacks["apgd-t"].n_target_classes == 9
    assert attackers.attacks["square"].n_queries == 5000


def test_adaptive_attack_adds_the_bce_of_gamma_to_the_loss():
    mix = build_adaptive(base(0), base(1), input_shape=(1, 16, 16), width=8).eval()
    x, y = labelled(mix, n=6)
    attackers = build_attackers(mix, eps=0.3, version="custom", custom=FAST, adaptive_weight=0.5)
    assert attackers.order[-2:] == ["adaptive-apgd-ce", "adaptive-apgd-t"]
    apgd = attackers.attacks["adaptive-apgd-ce"]
    assert isinstance(apgd, AdaptiveAPGD)
    logits = apgd.model(x)  # the tap keeps gamma of this pass
    _, gamma = mix.forward_with_gamma(x)
    expected = 0.5 * F.cross_entropy(logits, y, reduction="none") + 0.5 * F.softplus(-gamma)
    torch.testing.assert_close(apgd.ce_loss_targeted(logits, y), expected)
    adv = apgd.perturb(x, y)
    assert adv.shape == x.shape and (adv - x).abs().max() <= 0.3 + 1e-6
    assert apgd.loss == "ce"  # the loss name is restored after the run


def test_the_gate_under_attack_reads_every_images_highest_loss_point():
    mix = build_adaptive(base(0), base(1), input_shape=(1, 16, 16), width=8).eval()
    x, y = labelled(mix, n=6)
    attackers = build_attackers(mix, eps=0.3, version="custom", custom=FAST, adaptive_weight=0.5)
    gate = gate_under_attack(attackers, x, y, batch_size=4)
    with torch.no_grad():
        clean = mix.alpha(mix.forward_with_gamma(x)[1]).mean()
    assert gate["alpha_clean"] == pytest.approx(float(clean))
    assert 0.0 <= gate["alpha_attacked"] <= 1.0 and gate["n"] == 6
    # the adaptive attack maximises w BCE(gamma', 1) too, which pushes alpha down
    assert gate["alpha_adaptive"] < gate["alpha_attacked"]
    with pytest.raises(TypeError, match="adaptive mix"):
        gate_under_attack(build_attackers(base(0), eps=0.3, version="custom", custom=FAST), x, y)


def test_model_info_has_exactly_robustbench_fields_in_its_formats():
    info = model_info(
        name="cifar10 fixed mix",
        dataset="cifar10",
        architecture="resnet8 + resnet8",
        eps=8 / 255,
        clean_acc=0.99123,
        autoattack_acc=0.87,
        forward_passes=2,
    )
    assert list(info) == list(MODEL_INFO_FIELDS)
    assert info["clean_acc"] == "99.12" and info["autoattack_acc"] == "87.00"
    assert info["eps"] == "8/255" and info["number_forward_passes"] == 2
    assert info["additional_data"] is False and info["unreliable"] is False
    assert eps_text(0.3) == "0.3" and eps_text(0.1) == "0.1" and eps_text(4 / 255) == "4/255"


class Masked(nn.Module):
    """A model hiding its gradient: it classifies a quantised copy of the input (zero gradient)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


def report_for(model: nn.Module) -> dict:
    x, y = labelled(model, n=20)
    custom = APGDSettings(
        attacks=["apgd-ce", "square"], n_iter=40, square_queries=300, batch_size=50
    )
    settings = EvalSettings(
        version="custom",
        custom=custom,
        chunk=10,
        pgd_steps=10,
        eps_multiples=[1.0, 4.0],
        eps_sweep_subset=20,
    )
    attackers = build_attackers(model, eps=0.1, version="custom", custom=custom)
    return attack_report(attackers, x, y, eps=0.1, settings=settings)


def test_masking_check_flags_a_gradient_masked_model():
    report = report_for(Masked(base(0)))
    failed = {c["name"] for c in report["checks"] if c["passed"] is False}
    assert report["masking_suspected"]
    assert "eps->large" in failed  # PGD gets nowhere even with a huge eps
    assert "square<=white-box" in failed  # the black-box attack beats the white-box ones


def test_masking_checks_pass_on_an_honest_model():
    report = report_for(base(0))
    assert not report["masking_suspected"], report["checks"]
    assert report["autoattack"]["n"] == 20 and len(report["autoattack"]["ci95"]) == 2


def test_check_rules():
    assert check_autoattack_vs_pgd(0.50, 0.52).passed
    assert not check_autoattack_vs_pgd(0.55, 0.52).passed
    assert check_eps_growth([0.1, 0.3, 0.9], [0.9, 0.4, 0.0], zero=0.05).passed
    assert not check_eps_growth([0.1, 0.3, 0.9], [0.9, 0.4, 0.2], zero=0.05).passed
    assert not check_eps_growth([0.1, 0.3, 0.9], [0.5, 0.9, 0.0], zero=0.05).passed
    assert check_square({"apgd-ce": 0.5, "apgd-t": 0.4, "square": 0.4}).passed
    assert not check_square({"apgd-ce": 0.5, "square": 0.45}).passed
    assert check_square({"apgd-ce": 0.5}).passed is None


def test_autoattack_flags_are_quiet_for_a_deterministic_logit_model():
    model = base(0)
    x, y = labelled(model)
    assert autoattack_flags(model, x, y, attacks=["apgd-ce", "apgd-t"]) == []


class _DeviceProbe(nn.Module):
    """Records the device of every input batch; its only tensor lives on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("marker", torch.empty(1, device="meta"))
        self.seen: list[torch.device] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.device)
        return torch.zeros(len(x), 3)


def test_clean_correct_sends_batches_to_the_models_device_and_answers_on_the_cpu():
    probe = _DeviceProbe()
    correct = clean_correct(
        probe, torch.rand(7, 1, 2, 2), torch.zeros(7, dtype=torch.long), batch_size=3
    )
    assert probe.seen == [torch.device("meta")] * 3
    assert correct.device.type == "cpu" and correct.all()


def test_the_pgd_reference_draws_its_random_start_from_its_own_seed():
    """The same accuracy whatever ran before (a resumed evaluation runs no AutoAttack first),
    and the caller's random state untouched."""
    from trustvision.robust.evaluate import pgd_accuracy

    model = base(0)
    x, y = labelled(model, n=24)
    results = []
    for before in (1, 2):
        torch.manual_seed(before)
        state = torch.get_rng_state()
        results.append(pgd_accuracy(model, x, y, eps=0.3, steps=2))
        assert torch.equal(torch.get_rng_state(), state)
    assert results[0] == results[1]


def test_training_without_an_eps_takes_its_data_sets_budget():
    """As evaluation and mixing do: not MNIST's 0.3 on CIFAR-10 (77/255, far past 8/255)."""
    from trustvision.config import load_config
    from trustvision.errors import ConfigError
    from trustvision.robust.config import DEFAULT_EPS, RobustTrainConfig

    cifar = load_config(RobustTrainConfig, None, ["data.name=cifar10"])
    assert cifar.attack.eps == DEFAULT_EPS["cifar10"] == 8 / 255
    given = load_config(RobustTrainConfig, None, ["data.name=cifar10", "attack.eps=0.1"])
    assert given.attack.eps == 0.1
    with pytest.raises(ConfigError, match="fgsm_rs` is an l_inf attack"):
        load_config(RobustTrainConfig, None, ["attack.method=fgsm_rs", "attack.norm=l2"])
