"""The robust mixes' sweeps on validation images: alpha and the temperatures of the fixed mix,
the gamma bias of the adaptive mix, attacking as few points as the choice allows."""

import pytest
import torch
from robust_toys import toy_base
from torch import nn

import trustvision.robust.evaluate as evaluate
import trustvision.robust.sweep as sweep
from trustvision.robust.commands.common import PointStore
from trustvision.robust.config import SweepSettings
from trustvision.robust.mixing import MixedClassifier, build_adaptive
from trustvision.robust.runs import model_sha256

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fixed_grid_attacks_each_mix_once():
    settings = SweepSettings(
        alphas=(1.0, 0.0, 0.5), temperatures_std=(1.0, 2.0), temperatures_rob=(0.5, 1.0, 2.0)
    )
    grid = sweep.fixed_grid(settings)
    assert len(grid) == 2 + 2 * 3 + 3
    assert {g for g in grid if g[0] == 0.0} == {(0.0, 1.0, None), (0.0, 2.0, None)}
    assert {g for g in grid if g[0] == 1.0} == {
        (1.0, None, 0.5),
        (1.0, None, 1.0),
        (1.0, None, 2.0),
    }


def test_choose_breaks_ties_towards_temperatures_of_one():
    points = [
        {"alpha": 0.9, "temperature_std": 2.0, "temperature_rob": 1.0},
        {"alpha": 0.9, "temperature_std": 1.0, "temperature_rob": 1.0},
        {"alpha": 0.9, "temperature_std": 1.0, "temperature_rob": 0.5},
    ]
    for p in points:
        p.update(clean_acc=0.9, robust_acc=0.7)
    chosen = sweep.choose(points, tolerance=0.03, reference=0.7, key=sweep.FIXED_KNOBS)
    assert chosen["temperature_std"] == 1.0 and chosen["temperature_rob"] == 1.0


def test_a_models_hash_changes_with_its_weights_and_its_mix_knobs():
    def mix(alpha=0.5, s_h=1.0, seed=1):
        return MixedClassifier(toy_base(0), toy_base(seed), alpha=alpha, temperature_rob=s_h)

    same = model_sha256(mix())
    assert model_sha256(mix()) == same
    assert len({same, model_sha256(mix(alpha=0.6)), model_sha256(mix(s_h=2.0))}) == 3
    assert model_sha256(mix(seed=2)) != same
    assert model_sha256(toy_base(0)) != model_sha256(toy_base(1))


def test_bias_sweep_clean_accuracy_matches_the_mix_itself(monkeypatch):
    mix = build_adaptive(toy_base(0), toy_base(1), input_shape=(1, 16, 16), width=8, gamma_bias=0.3)
    mix.eval()
    x = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    y = mix(x).argmax(1)
    y[::3] = (y[::3] + 1) % 10  # some wrong labels so that accuracies differ
    monkeypatch.setattr(sweep, "robust_accuracy", lambda *a, **k: sweep.Robustness(0.5, 0.0))
    settings = SweepSettings(subset=10, temperatures_std=(1.0, 3.0), temperatures_rob=(0.3, 1.0))
    grid = sweep.gate_grid((-2.0, 2.0), (0.5, 1.0), ((0.0, 1.0), (0.1, 0.9)), settings)
    points = sweep.bias_sweep(mix, images=(x, y), grid=grid, eps=0.1, settings=settings)
    assert len(points) == 32 and float(mix.gamma_bias) == pytest.approx(0.3)  # knobs restored
    assert float(mix.gamma_scale) == 1.0 and float(mix.alpha_high) == 1.0
    for point in points:
        sweep.set_knobs(mix, point)
        assert point["clean_acc"] == float(evaluate.clean_correct(mix, x, y).float().mean())


def test_the_lazy_gate_sweep_chooses_what_attacking_every_point_would(monkeypatch):
    mix = build_adaptive(toy_base(0), toy_base(1), input_shape=(1, 16, 16), width=8).eval()
    nn.init.normal_(mix.mixnet.linear.weight, std=30.0, generator=torch.Generator().manual_seed(0))
    x = torch.rand(60, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    y = mix.standard(x).argmax(1)  # clean accuracy falls as alpha grows, robustness rises
    attacked = []

    def fake_robust_accuracy(model, *args, give_up_below=None, **kwargs):  # alpha up: robust
        attacked.append(give_up_below)
        acc = round(float(model.gamma_bias) / 10 + 0.5, 3)
        if give_up_below is not None and acc < give_up_below:  # stopped early: a bound
            return sweep.Robustness(acc + 0.001, 0.0, complete=False)
        return sweep.Robustness(acc, 0.0)

    monkeypatch.setattr(sweep, "robust_accuracy", fake_robust_accuracy)
    settings = SweepSettings(subset=10, temperatures_rob=(0.5, 1.0), tolerance=0.05)
    grid = sweep.gate_grid((-3.0, -1.0, 0.0, 1.0, 2.0, 4.0), (1.0, 2.0), ((0.0, 1.0),), settings)
    full = sweep.bias_sweep(mix, images=(x, y), grid=grid, eps=0.1, settings=settings)
    lazy = sweep.bias_sweep(
        mix, images=(x, y), grid=grid, eps=0.1, settings=settings, reference=0.65
    )
    assert len(attacked) < 2 * len(grid)  # the lazy sweep skipped some points
    assert attacked[-1] == pytest.approx(0.6)  # its attacks may stop below 0.65 - 0.05
    assert any(p.get("robust_complete") is False for p in lazy)
    keys = sweep.ADAPTIVE_KNOBS
    expected = sweep.choose(full, tolerance=0.05, reference=0.65, key=keys)
    assert sweep.choose(lazy, tolerance=0.05, reference=0.65, key=keys) == expected
    skipped = [p for p in lazy if p["robust_acc"] is None]
    assert skipped and all(p["clean_acc"] < expected["clean_acc"] for p in skipped)


def fake_fixed_sweep(monkeypatch, *, clean, robust, n=40, attacked=None):
    """Replace the fixed sweep's two measurements by `clean(alpha, s_h)` and
    `robust(alpha, s_h, give_up_below)`; returns the sweep's images."""

    def fake_robust_accuracy(model, *args, give_up_below=None, **kwargs):
        if attacked is not None:
            attacked.append(give_up_below)
        return robust(float(model.alpha), model.temperature_rob, give_up_below)

    monkeypatch.setattr(
        sweep,
        "clean_accuracy_at",
        lambda *args, alpha, temperature_std, temperature_rob: clean(alpha, temperature_rob),
    )
    monkeypatch.setattr(sweep, "robust_accuracy", fake_robust_accuracy)
    x = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(n))
    return x, torch.zeros(n, dtype=torch.long)


def test_the_lazy_fixed_sweep_chooses_what_attacking_every_point_would(monkeypatch):
    def robust(alpha, s_h, give_up_below):  # alpha up: robust
        acc = round(0.2 + 0.5 * alpha - 0.01 * s_h, 3)
        if give_up_below is not None and acc < give_up_below:
            return sweep.Robustness(acc + 0.001, 0.0, complete=False)
        return sweep.Robustness(acc, 0.0)

    attacked: list = []
    images = fake_fixed_sweep(
        monkeypatch,
        clean=lambda alpha, s_h: round(0.95 - 0.1 * alpha - 0.01 * s_h, 4),  # alpha up: less
        robust=robust,
        attacked=attacked,
    )
    settings = SweepSettings(
        subset=10,
        alphas=(0.0, 0.5, 0.7, 0.8, 0.9, 1.0),
        temperatures_rob=(0.5, 1.0),
        tolerance=0.05,
    )
    args = {"images": images, "eps": 0.1, "settings": settings}
    full = sweep.alpha_sweep(toy_base(0), toy_base(1), **args)
    attacked.clear()
    lazy = sweep.alpha_sweep(toy_base(0), toy_base(1), **args, reference=0.69)
    assert len(attacked) < len(full) and attacked[0] == pytest.approx(0.64)
    assert any(p["robust_complete"] is False for p in lazy)
    keys = sweep.FIXED_KNOBS
    expected = sweep.choose(full, tolerance=0.05, reference=0.69, key=keys)
    assert (expected["alpha"], expected["temperature_rob"]) == (0.9, 0.5)  # 0.645 >= 0.64
    assert sweep.choose(lazy, tolerance=0.05, reference=0.69, key=keys) == expected
    skipped = [p for p in lazy if p["robust_acc"] is None]
    assert skipped and all(p["clean_acc"] < expected["clean_acc"] for p in skipped)


def test_with_no_point_admitted_the_lazy_sweep_still_finds_the_most_robust(monkeypatch):
    def robust(alpha, s_h, give_up_below):
        if give_up_below is not None:  # stopped early: bounds that rank the points backwards
            return sweep.Robustness(give_up_below - 0.01 * alpha, 0.0, False)
        return sweep.Robustness(round(0.2 + 0.3 * alpha, 3), 0.0)  # far below any floor here

    images = fake_fixed_sweep(
        monkeypatch, clean=lambda alpha, s_h: round(0.95 - 0.1 * alpha, 4), robust=robust, n=20
    )
    settings = SweepSettings(subset=10, alphas=(0.0, 0.5, 0.8, 1.0), tolerance=0.05)
    args = {"images": images, "eps": 0.1, "settings": settings}
    full = sweep.alpha_sweep(toy_base(0), toy_base(1), **args)
    lazy = sweep.alpha_sweep(toy_base(0), toy_base(1), **args, reference=0.9)
    keys = sweep.FIXED_KNOBS
    expected = sweep.choose(full, tolerance=0.05, reference=0.9, key=keys)
    assert expected["alpha"] == 1.0  # nothing within 0.05 of 0.9: the most robust point
    chosen = sweep.choose(lazy, tolerance=0.05, reference=0.9, key=keys)
    assert chosen == expected and chosen["robust_complete"] is True


def test_a_sweeps_store_keeps_the_reference_and_a_bound_below_a_new_floor_is_attacked_again(
    tmp_path,
):
    store = PointStore(tmp_path / "points.json", {"eps": 0.1})
    store.record_reference(0.72)
    store.record({"alpha": 0.9, "robust_acc": 0.66, "seconds": 1.0, "robust_complete": False})
    again = PointStore(tmp_path / "points.json", {"eps": 0.1})
    assert again.reference == 0.72 and next(iter(again.done.values())).complete is False
    assert PointStore(tmp_path / "points.json", {"eps": 0.2}).reference is None

    attacked = []

    def attack(point, floor):  # fully attacked (floor None): exact; else stopped, a bound
        attacked.append(floor)
        return sweep.Robustness(0.61, 2.0, complete=floor is None)

    sweep.attack_in_order([{"alpha": 0.9, "clean_acc": 0.9}], attack, floor=0.7, done=again.done)
    assert attacked == [None]  # the kept bound stays below 0.7; none admitted: settled fully
    attacked.clear()
    sweep.attack_in_order([{"alpha": 0.9, "clean_acc": 0.9}], attack, floor=0.65, done=again.done)
    assert attacked[0] == 0.65  # a bound of 0.66 could reach 0.65: attacked again
    attacked.clear()
    points = [{"alpha": 0.9, "clean_acc": 0.9}]
    sweep.attack_in_order(points, attack, floor=None, done=again.done)
    assert attacked == [None] and points[0]["robust_complete"]  # no floor: no bound is kept
