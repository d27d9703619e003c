"""The mixed classifier and the mixing network: exact algebra, frozen bases, one tensor out."""

import math

import pytest
import torch
import torch.nn.functional as F
from robust_toys import toy_base

import trustvision.robust.runs as robust_runs
from trustvision.errors import ConfigError
from trustvision.models import create_model
from trustvision.robust.mixing import (
    MixedClassifier,
    build_adaptive,
    gate_log_weights,
    mix_log_probs,
)
from trustvision.robust.mixnet_settings import MixNetSettings
from trustvision.robust.mixtrain import (
    GateMonitor,
    average_gate_statistics,
    gate_record,
    mixing_objective,
    ranked_targets,
    training_adversaries,
)
from trustvision.robust.pixels import Normalized
from trustvision.robust.sweep import choose
from trustvision.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.75, 1.0])
def test_mix_is_the_log_of_the_convex_mix_of_softmaxes(alpha):
    g, h, x = toy_base(0), toy_base(1), images()
    mix = MixedClassifier(g, h, alpha=alpha, temperature_std=2.0, temperature_rob=0.5)
    with torch.no_grad():
        expected = (1 - alpha) * F.softmax(2.0 * g(x), 1) + alpha * F.softmax(0.5 * h(x), 1)
        out = mix(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out.exp(), expected, atol=1e-6, rtol=1e-5)
    finite = expected > 1e-30  # where the naive log does not underflow, the logs agree too
    torch.testing.assert_close(out[finite], expected[finite].log(), atol=1e-4, rtol=1e-4)


def test_mix_reduces_to_each_base_at_alpha_0_and_1():
    g, h, x = toy_base(0), toy_base(1), images()
    with torch.no_grad():
        at0 = MixedClassifier(g, h, alpha=0.0)(x)
        at1 = MixedClassifier(g, h, alpha=1.0)(x)
        torch.testing.assert_close(at0, F.log_softmax(g(x), 1))
        torch.testing.assert_close(at1, F.log_softmax(h(x), 1))
    assert (at0.argmax(1) == g(x).argmax(1)).all() and (at1.argmax(1) == h(x).argmax(1)).all()


def test_mix_log_probs_is_exact_where_probabilities_underflow():
    big = torch.tensor([[200.0, 0.0, -200.0]])
    out = mix_log_probs(big, -big, log_alpha=math.log(0.5), log_one_minus_alpha=math.log(0.5))
    assert torch.isfinite(out).all()
    assert out.exp().sum().item() == pytest.approx(1.0)


def test_input_gradient_is_finite_at_the_ends():
    g, h = toy_base(0), toy_base(1)
    for alpha in (0.0, 1.0, 0.5):
        x = images().requires_grad_(True)
        MixedClassifier(g, h, alpha=alpha)(x).sum().backward()
        assert torch.isfinite(x.grad).all()


def test_bases_are_frozen_and_stay_in_eval_mode():
    mix = MixedClassifier(toy_base(0), toy_base(1), alpha=0.5)
    mix.train()
    assert not mix.standard.training and not mix.robust.training
    assert not any(p.requires_grad for p in mix.parameters())


def adaptive_mix():
    return build_adaptive(toy_base(0), toy_base(1), input_shape=(1, 16, 16), width=8)


def test_adaptive_mix_returns_one_tensor_and_gamma():
    mix = adaptive_mix().eval()
    out, gamma = mix.forward_with_gamma(images())
    assert isinstance(mix(images()), torch.Tensor)
    assert out.shape == (8, 10) and gamma.shape == (8,)
    alpha = torch.sigmoid(gamma)[:, None]
    with torch.no_grad():
        x = images()
        expected = (1 - alpha) * F.softmax(mix.standard(x), 1) + alpha * F.softmax(mix.robust(x), 1)
    torch.testing.assert_close(out.detach().exp(), expected, atol=1e-6, rtol=1e-5)


def test_mixing_network_trains_only_its_own_parameters():
    mix = adaptive_mix()
    bases_before = {
        k: v.clone() for k, v in mix.state_dict().items() if k.startswith(("standard.", "robust."))
    }
    mixnet_before = {k: v.clone() for k, v in mix.mixnet.state_dict().items()}
    optimizer = torch.optim.AdamW(mix.mixnet.parameters(), lr=1e-2)
    objective = mixing_objective(MixNetSettings(steps_df=1.0, target_classes=1), eps=0.1)
    mix.train()
    x, y = images(16), torch.randint(0, 10, (16,))
    for _ in range(2):
        loss, logits = objective(mix, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert logits.shape == (16, 10)
    assert all(p.grad is None for n, p in mix.named_parameters() if not n.startswith("mixnet."))
    after = mix.state_dict()
    assert all(torch.equal(after[k], v) for k, v in bases_before.items())
    assert any(not torch.equal(mix.mixnet.state_dict()[k], v) for k, v in mixnet_before.items())
    assert not mix.standard.training and not mix.robust.training


def test_a_gate_trained_on_separable_inputs_tells_them_apart_in_evaluation_mode():
    """Clean images against the same images with visible noise: after training (clamp on, the
    BatchNorm updated once per mixed part), evaluation mode must give the noisy ones a much
    larger alpha, on images it never trained on."""
    torch.manual_seed(0)
    mix = build_adaptive(
        toy_base(0), toy_base(1), input_shape=(1, 16, 16), width=8, gamma_clamp=0.6
    )
    optimizer = torch.optim.AdamW(mix.mixnet.parameters(), lr=1e-2)

    def smooth(n: int) -> torch.Tensor:
        return F.interpolate(torch.rand(n, 1, 4, 4), size=16, mode="bilinear")

    def noisy(x: torch.Tensor) -> torch.Tensor:
        return (x + 0.3 * torch.randn_like(x)).clamp(0, 1)

    mix.train()
    for _ in range(40):
        clean = smooth(32)
        x, label = torch.cat([clean, noisy(clean)]), torch.cat([torch.zeros(32), torch.ones(32)])
        order = torch.randperm(64)
        optimizer.zero_grad()
        for part in order.chunk(4):
            gamma = mix.forward_with_gamma(x[part])[1]
            F.binary_cross_entropy_with_logits(gamma, label[part]).backward()
        optimizer.step()
    mix.eval()
    held_out = smooth(100)
    with torch.no_grad():
        alpha_clean = mix.alpha(mix.forward_with_gamma(held_out)[1]).mean()
        alpha_noisy = mix.alpha(mix.forward_with_gamma(noisy(held_out))[1]).mean()
    assert alpha_noisy - alpha_clean > 0.5, (float(alpha_clean), float(alpha_noisy))


def test_the_alpha_range_maps_the_gate_onto_low_high_in_evaluation_mode_only():
    mix = adaptive_mix()
    mix.alpha_low.fill_(0.2)
    mix.alpha_high.fill_(0.7)
    gamma = torch.tensor([-50.0, 0.0, 50.0])
    log_a, log_b = gate_log_weights(gamma, alpha_low=0.2, alpha_high=0.7)
    torch.testing.assert_close(log_a.exp(), torch.tensor([0.2, 0.45, 0.7]))
    torch.testing.assert_close(log_a.exp() + log_b.exp(), torch.ones(3))
    assert torch.allclose(mix.eval().alpha(gamma), torch.tensor([0.2, 0.45, 0.7]))
    assert torch.allclose(mix.train().alpha(gamma), torch.sigmoid(gamma))  # training: unranged
    full = gate_log_weights(torch.tensor([-200.0, 200.0]))  # the full range stays exact
    assert torch.isfinite(full[0][1]) and torch.isfinite(full[1][0])


def test_the_training_clamp_bounds_gamma_to_the_batch_mean_plus_minus_c_std():
    mix = adaptive_mix()
    mix.gamma_clamp = 0.6
    raw = torch.tensor([-10.0, 0.0, 0.0, 0.0, 10.0])
    mean, std = raw.mean(), raw.std()
    mix.train()
    gated = mix.gate(raw)
    clamped = raw.clamp(mean - 0.6 * std, mean + 0.6 * std)
    expected = (clamped - clamped.mean()) / torch.sqrt(clamped.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(gated, expected)
    mix.eval()  # no clamp in evaluation mode: the extremes keep their order and distance
    assert mix.gate(raw)[-1] > mix.gate(raw)[-2]


def test_the_last_epoch_averages_the_gates_statistics_afresh():
    mix = adaptive_mix().train()
    for _ in range(3):  # earlier steps, to be forgotten
        mix.forward_with_gamma(images(8) * 0.1)
    trained = mix.gamma_norm.running_mean.clone(), mix.gamma_norm.running_var.clone()
    average_gate_statistics(mix)
    kept = mix.gamma_norm.running_mean, mix.gamma_norm.running_var
    assert all(torch.equal(a, b) for a, b in zip(trained, kept, strict=True))  # until a pass
    means = []
    for seed in range(4):
        x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(10 + seed))
        with torch.no_grad():
            raw = mix.raw_gamma(
                mix.standard.forward_with_maps(x)[1], mix.robust.forward_with_maps(x)[1]
            )
            mix.forward_with_gamma(x)
        means.append(raw.mean())
    assert int(mix.gamma_norm.num_batches_tracked) == 4
    torch.testing.assert_close(mix.gamma_norm.running_mean[0], torch.stack(means).mean())


def test_every_clean_image_gets_one_untargeted_and_k_targeted_attacks():
    mix = adaptive_mix()
    x, y = images(16), torch.randint(0, 10, (16,))
    targets = ranked_targets(mix, x, y, 3)
    assert len(targets) == 3 and all((t != y).all() for t in targets)
    monitor = GateMonitor()
    cfg = MixNetSettings(steps_df=1.0, target_classes=3)
    mix.train()
    loss, logits = mixing_objective(cfg, eps=0.1, monitor=monitor)(mix, x, y)
    assert logits.shape == (16, 10) and torch.isfinite(loss)
    assert monitor.counts == {"clean": 16, "attacked": 64}  # 1 + 3 attacks per image
    record = monitor.epoch_record()
    assert set(record) == {"train_alpha_clean", "train_alpha_attacked"}
    assert monitor.counts == {"clean": 0, "attacked": 0}  # reset for the next epoch
    stats = gate_record(mix, x, y, eps=0.1, steps=2)
    assert {
        "val_alpha_clean",
        "val_alpha_attacked",
        "val_alpha_adaptive",
        "gate_bn_updates",
    } <= set(stats)
    assert stats["val_raw_gamma_std_clean"] > 0 and mix.training


def test_choose_takes_the_most_accurate_point_close_enough_to_the_robust_base():
    points = [
        {"alpha": 0.0, "clean_acc": 0.99, "robust_acc": 0.0},
        {"alpha": 0.8, "clean_acc": 0.95, "robust_acc": 0.70},
        {"alpha": 1.0, "clean_acc": 0.90, "robust_acc": 0.72},
    ]
    assert choose(points, tolerance=0.03, reference=0.72)["alpha"] == 0.8
    assert choose(points, tolerance=0.01, reference=0.72)["alpha"] == 1.0
    # nothing within reach of an outside reference: the most robust point, never the least
    assert choose(points, tolerance=0.03, reference=0.9)["alpha"] == 1.0


def resnet_toy(seed: int) -> Normalized:
    torch.manual_seed(seed)
    net = create_model("resnet20", num_classes=10, in_channels=3)
    return Normalized(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_the_mixing_network_reads_the_stages_it_is_given_and_a_saved_mix_keeps_them(
    tmp_path, monkeypatch
):
    bases = {"std": resnet_toy(0), "rob": resnet_toy(1)}  # ResNet-20: 16, 32, 64 channels
    mix = build_adaptive(
        bases["std"], bases["rob"], input_shape=(3, 16, 16), width=8, stages=(1, 2)
    ).eval()
    assert mix.mixnet.low.conv1.in_channels == 64 and mix.mixnet.high.in_channels == 128
    x = torch.rand(4, 3, 16, 16)
    _, gamma = mix.forward_with_gamma(x)
    with pytest.raises(ConfigError, match=r"stages \[1, 3\].*3 and 3 stages"):
        build_adaptive(bases["std"], bases["rob"], input_shape=(3, 16, 16), width=8, stages=(1, 3))
    with pytest.raises(ValueError, match="earlier < later"):
        MixNetSettings(stages=(1, 0))

    monkeypatch.setattr(robust_runs, "load_base", lambda path, device: bases[path])
    monkeypatch.setattr(robust_runs, "data_of", lambda path: {"image_shape": [3, 16, 16]})
    spec = {"kind": "adaptive", "standard": "std", "robust": "rob", "width": 8, "stages": [1, 2]}
    robust_runs.write_mix(
        RunDir(tmp_path), spec | {"temperature_std": 1, "temperature_rob": 1}, mix
    )
    loaded = robust_runs.load_mix(tmp_path)
    torch.testing.assert_close(loaded.forward_with_gamma(x)[1], gamma)


def test_a_mixing_network_checkpoint_from_before_val_names_is_read_with_them():
    from trustvision.robust.commands.adaptive import _validation_names

    legacy = {"epoch": 1, "test_acc": 0.5, "test_loss": 1.0, "val_alpha_clean": 0.2}
    assert _validation_names(legacy) == {
        "epoch": 1,
        "val_acc": 0.5,
        "val_loss": 1.0,
        "val_alpha_clean": 0.2,
    }
    current = {"epoch": 1, "val_acc": 0.5, "test_note": "kept"}
    assert _validation_names(current) == current


def test_blind_training_attacks_do_not_see_the_gate_and_the_others_do():
    """Two mixes of the same bases with different mixing networks: attacks made blind (on the
    bases' 50/50 mix) are the same for both; attacks on the composite differ."""
    x, y = images(8), torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1))
    cfg = MixNetSettings(steps_df=3.0, target_classes=1, bce_weight_max=0.4)
    mixes = [adaptive_mix(), adaptive_mix()]
    torch.manual_seed(5)
    with torch.no_grad():
        for p in mixes[1].mixnet.parameters():
            p.add_(torch.randn_like(p))

    def attacked(mix, blind):
        torch.manual_seed(7)
        return training_adversaries(mix, x, y, eps=0.3, cfg=cfg, blind=blind)

    for blind_copy, other in zip(attacked(mixes[0], True), attacked(mixes[1], True), strict=True):
        torch.testing.assert_close(blind_copy, other)
    seeing = [attacked(mix, False) for mix in mixes]
    assert not torch.allclose(seeing[0][0], seeing[1][0])
    with pytest.raises(ValueError, match="must not exceed"):
        MixNetSettings(epochs=2, blind_epochs=3)


def test_a_mix_names_its_bases_by_absolute_path_and_an_older_relative_one_is_explained(
    tmp_path, monkeypatch
):
    """A mix made with bases given relative to the working directory loads from any other
    directory; a mix.json of before (relative paths) that does not resolve says why."""
    from trustvision.robust.commands.common import absolute, mix_spec
    from trustvision.robust.config import MixConfig

    monkeypatch.chdir(tmp_path)
    spec = mix_spec(
        MixConfig(standard="work/standard", robust="work/robust"),
        temperature_std=1.0,
        temperature_rob=1.0,
        alpha=0.9,
    )
    assert spec["standard"] == str(tmp_path / "work/standard")
    assert spec["robust"] == str(tmp_path / "work/robust")
    assert absolute("work/robust") == spec["robust"]  # what the mix's summary records too

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "old-mix").mkdir()
    robust_runs.write_mix(RunDir(tmp_path / "old-mix"), spec | {"standard": "work/standard"})
    with pytest.raises(ConfigError, match=r"standard base `work/standard`, a path relative"):
        robust_runs.load_mix(tmp_path / "old-mix")
