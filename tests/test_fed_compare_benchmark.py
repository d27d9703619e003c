"""benchmarks/fed_compare.py: which runs count as the validation-chosen config, what it refuses
before training, and the report it writes (kept methods, pairs by seed, per-class accuracy)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from benchmark_scripts import benchmark
from test_fed_sweep_specs import fed_sweep

ROOT = Path(__file__).parents[1]


def test_a_run_counts_as_tuned_only_if_it_trained_the_chosen_config(tmp_path):
    """A seed trained with the defaults before its method's sweep finished is not reported as
    tuned once the choice exists."""
    bench = benchmark("fed_compare")
    chosen = tmp_path / "fedprox.chosen.yaml"
    chosen.write_text("# chosen\nseed: 0\nruns_dir: runs\noptim: {lr: 0.2}\n")
    runs = {}
    for name, lr in (("defaults", 0.03), ("chosen", 0.2)):
        runs[name] = tmp_path / "seed1" / name
        runs[name].mkdir(parents=True)
        config = {"seed": 1, "runs_dir": str(tmp_path / "seed1"), "optim": {"lr": lr}}
        (runs[name] / "config.yaml").write_text(yaml.safe_dump(config))
    assert bench.trained_chosen(runs["chosen"], chosen)
    assert not bench.trained_chosen(runs["defaults"], chosen)
    assert not bench.trained_chosen(runs["chosen"], None)


def test_overrides_of_a_validation_chosen_config_are_refused_before_any_training(
    tmp_path, monkeypatch
):
    bench = benchmark("fed_compare")
    (tmp_path / "fmnist-cnn").mkdir()
    (tmp_path / "fmnist-cnn/fedavg.chosen.yaml").write_text("optim: {lr: 0.2}\n")
    argv = ["fed_compare.py", "--settings", "fmnist-cnn", "--algorithms", "fedavg", "fedprox"]
    argv += ["--sweeps", str(tmp_path), "--runs", str(tmp_path / "runs"), "rounds=2"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(bench, "train", lambda *a: pytest.fail("trained before refusing"))
    with pytest.raises(SystemExit, match=r"chosen on validation for fedavg \(fmnist-cnn\)"):
        bench.main()


def test_a_method_whose_sweep_is_still_searching_is_not_trained_at_its_defaults(
    tmp_path, monkeypatch
):
    bench = benchmark("fed_compare")
    (tmp_path / "cifar10/fedloge").mkdir(parents=True)  # begun, nothing chosen yet
    (tmp_path / "cifar10/fedavg.chosen.yaml").write_text("optim: {lr: 0.2}\n")
    argv = ["fed_compare.py", "--settings", "cifar10", "--sweeps", str(tmp_path)]
    argv += ["--runs", str(tmp_path / "runs")]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(bench, "train", lambda *a: pytest.fail("trained before refusing"))
    with pytest.raises(SystemExit, match=r"the sweeps of fedloge \(cifar10\) .* chosen nothing"):
        bench.main()


def test_each_setting_runs_its_own_methods_and_algorithms_picks_among_them(monkeypatch):
    bench = benchmark("fed_compare")
    argv = ["fed_compare.py", "--settings", "cifar10", "fmnist-cnn"]
    monkeypatch.setattr(sys, "argv", argv)
    jobs = bench.jobs_of(bench.parse_args())
    assert {a for s, a, _ in jobs if s == "cifar10"} == {"fedavg", "fedloge"}
    assert {a for s, a, _ in jobs if s == "fmnist-cnn"} == set(bench.ALGORITHMS)
    monkeypatch.setattr(sys, "argv", [*argv, "--algorithms", "fedprox", "fedloge"])
    picked = bench.jobs_of(bench.parse_args())
    monkeypatch.setattr(
        sys, "argv", ["fed_compare.py", "--settings", "cifar10", "--algorithms", "fedprox"]
    )
    with pytest.raises(SystemExit, match=r"none of \['fedprox'\] is compared on cifar10"):
        bench.main()
    assert sorted({(s, a) for s, a, _ in picked}) == [
        ("cifar10", "fedloge"),  # FedProx is no CIFAR-10 method: not run there
        ("fmnist-cnn", "fedloge"),
        ("fmnist-cnn", "fedprox"),
    ]


def test_the_seed_the_sweeps_chose_on_is_never_compared_for_a_tuned_method(tmp_path, monkeypatch):
    """Seed 0's chosen trial won on validation among its sweep's trials: its test numbers
    would be optimistic, so the comparison's seeds exclude it and asking for it is refused."""
    bench = benchmark("fed_compare")
    assert all(bench.SWEEP_SEED not in s["seeds"] for s in bench.SETTINGS.values())
    assert all(
        f"seed={bench.SWEEP_SEED}" in fed_sweep().spec(s, "fedavg")["overrides"]
        for s in bench.SETTINGS
    )
    (tmp_path / "fmnist-cnn").mkdir()
    (tmp_path / "fmnist-cnn/fedavg.chosen.yaml").write_text("optim: {lr: 0.2}\n")
    argv = ["fed_compare.py", "--settings", "fmnist-cnn", "--algorithms", "fedavg", "--seeds"]
    argv += ["0", "1", "--sweeps", str(tmp_path), "--runs", str(tmp_path / "runs")]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(bench, "train", lambda *a: pytest.fail("trained before refusing"))
    with pytest.raises(SystemExit, match=r"seed 0 is the seed the sweeps chose fedavg"):
        bench.main()


def test_the_comparison_table_names_each_methods_learning_rate_and_own_knob():
    cell = benchmark("fed_compare_report").config_cell
    prox = {"config": {"optim.lr": 0.8, "options": {"mu": 0.000333}}, "selected_by": "validation"}
    assert cell("fedprox", prox) == "tuned (lr 0.8, mu 0.000333)"
    avg = {"config": {"optim.lr": 0.03, "options": {}}, "selected_by": "defaults"}
    assert cell("fedavg", avg) == "defaults (lr 0.03)"


def test_rewriting_the_federated_report_keeps_the_methods_whose_runs_are_gone(
    tmp_path, monkeypatch
):
    """fed_compare.py --report-only on a machine without the runs: every committed method
    stays, with its numbers, marked kept with the command that reported it."""
    bench = benchmark("fed_compare")
    out = tmp_path / "results"
    out.mkdir()
    committed = json.loads((ROOT / "docs/results/federated.json").read_text())
    (out / "federated.json").write_text(json.dumps(committed))
    argv = ["fed_compare.py", "--report-only", "--settings", "fmnist-cnn", "--algorithms"]
    argv += ["fedavg", "--runs", str(tmp_path / "no-runs"), "--sweeps", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    bench.main()
    rewritten = json.loads((out / "federated.json").read_text())
    for setting, block in committed["results"].items():
        for algorithm, row in block["algorithms"].items():
            kept = rewritten["results"][setting]["algorithms"][algorithm]
            assert kept["generic_acc"] == row["generic_acc"]
            # where it was measured, also where the committed report had kept it already
            assert kept["kept_from"] == (row.get("kept_from") or [committed["meta"]["command"]])
            # never the rewriting command itself, which measured nothing
            assert not any("no-runs" in command for command in kept["kept_from"])
    assert rewritten["meta"]["missing"] == []  # fedavg's seeds are kept, not missing
    text = (out / "federated.md").read_text()
    assert "(kept)" in text and "reported them" in text
    assert all(f"`{command}`" in text for command in kept["kept_from"])
    assert "Not run yet" not in text
    assert (out / "federated_fmnist-gap_rounds.png").stat().st_size > 10_000


def test_fedloge_is_paired_with_each_rival_on_the_seeds_both_ran_only():
    """Per-seed differences match FedLoGe's seed k with the rival's seed k; a seed one method
    lacks, a row without a seed (kept from before seeds were recorded) and a missing value
    are left out, and the report prints the differences."""
    bench = benchmark("fed_compare")
    report = benchmark("fed_compare_report")

    def row(seed, generic, local):
        keys = dict.fromkeys(("selected_generic", "selected_local"), None)
        row = {**keys, "seed": seed, "generic_acc": generic, "local_acc_masked": local}
        return row | {"tuned": True}

    block = {
        "fedloge": [row(1, 0.85, 0.93), row(2, 0.79, 0.92), row(3, 0.80, 0.90)],
        "fedavg": [row(2, 0.81, 0.91), row(1, 0.83, 0.92), row(None, 0.99, 0.99)],
        "fedper": [row(3, None, 0.94)],
    }
    paired = bench.paired(block)
    generic = paired["fedavg"]["generic_acc"]
    assert generic["seeds"] == [1, 2]
    assert generic["differences"] == pytest.approx([0.02, -0.02])
    assert generic["mean"] == pytest.approx(0.0) and generic["n"] == 2
    assert paired["fedper"]["local_acc_masked"]["differences"] == pytest.approx([-0.04])
    assert "generic_acc" not in paired["fedper"] and "selected_generic" not in paired["fedavg"]
    text = "\n".join(report.paired_lines(paired))
    assert "FedLoGe minus fedavg on generic: +2.0, -2.0 (seeds 1, 2; mean +0.0 ± 2.8)" in text
    assert bench.paired({"fedavg": block["fedavg"]}) == {}


def test_the_report_gives_each_global_models_accuracy_per_class_averaged_over_seeds():
    bench = benchmark("fed_compare_numbers")
    report = benchmark("fed_compare_report")
    rows = {
        "fedavg": [{"generic_per_class": [0.9, 0.2]}, {"generic_per_class": [0.7, 0.4]}],
        "fedper": [{"generic_per_class": None}, {"generic_per_class": None}],
    }
    means = {
        a: {"generic_per_class": bench.summarise_per_class(r), "train_counts": [50, 5]}
        for a, r in rows.items()
    }
    assert means["fedavg"]["generic_per_class"] == pytest.approx([0.8, 0.3])
    assert means["fedper"]["generic_per_class"] is None
    text = "\n".join(report.per_class_lines(means))
    assert "| algorithm | 0 (50) | 1 (5) |" in text and "| fedavg | 80.0 | 30.0 |" in text
    assert "fedper" not in text


def test_fedloge_is_set_against_every_method_with_the_spread_marked():
    report = benchmark("fed_compare_report")
    nan = {"mean": float("nan"), "std": float("nan"), "n": 0}

    def row(generic: float, std: float, local: float) -> dict:
        numbers = {"mean": generic, "std": std, "n": 3}
        at_local = {"mean": local, "std": 0.001, "n": 3}
        return {
            "generic_acc": numbers,
            "selected_generic": numbers,
            "local_acc_masked": at_local,
            "selected_local": at_local,
        }

    rows = {
        "fedloge": row(0.83, 0.01, 0.925),
        "fedavg": row(0.80, 0.005, 0.93),  # FedLoGe 3 ahead beyond 1; 0.5 behind beyond 0.1
        "fedetf": row(0.84, 0.02, 0.925),  # 1 behind, within 2; level
        "fedper": {**row(0, 0, 0.90), "generic_acc": nan, "selected_generic": nan},
    }
    lines = report.against_every_method(rows)
    assert "| fedavg | **+3.0** | **+3.0** | _-0.5_ | _-0.5_ |" in lines
    assert "| fedetf | -1.0 | -1.0 | +0.0 | +0.0 |" in lines
    assert "| fedper | - | - | **+2.5** | **+2.5** |" in lines
    assert not any(line.startswith("| fedloge") for line in lines)


def test_the_report_weighs_one_validation_image_of_the_rarest_class():
    report = benchmark("fed_compare_report")
    counts = {"1": [597, 361, 216, 129, 79, 43, 29, 19, 9, 4], "2": [599] + [20] * 8 + [5]}
    (line,) = [line for line in report.validation_lines(counts) if line]
    assert "4 (seed 1), 5 (seed 2)" in line
    assert "by up to 2.5 points" in line  # 1 / (10 classes x 4 images)
    assert report.validation_lines({}) == []


def test_one_seed_never_beats_and_means_over_other_seeds_are_not_marked():
    """One seed has no spread: the verdict and the goal do not call a positive gap a win (the
    CIFAR-10 setting ran seed 1 only at first), and the every-method table leaves unmarked, naming
    them, the gaps to a method averaged over other seeds than FedLoGe's."""
    report = benchmark("fed_compare_report")
    keys = [key for key, _ in report.RIVALS]

    def method(mean, n, seeds):
        return {key: {"mean": mean, "std": 0.001, "n": n} for key in keys} | {"seeds": seeds}

    one = {"fedloge": method(0.9, 1, [1]), "fedavg": method(0.5, 1, [1])}
    text = "\n".join(report.verdict(one))
    assert "FedLoGe beats" not in text
    assert "FedLoGe is ahead of fedavg on generic by 40.0 points, on one seed: no spread" in text
    behind = "\n".join(report.verdict({**one, "fedavg": method(0.95, 1, [1])}))
    assert "FedLoGe is behind fedavg on generic by 5.0 points, on one seed" in behind
    assert "Goal at the final round: not judged" in text
    assert "vs std" not in text  # no spread was measured, not a spread of zero
    diff = {"seeds": [1], "differences": [0.4], "mean": 0.4, "std": 0.0, "n": 1}
    (_, line) = report.paired_lines({"fedavg": {"generic_acc": diff}})
    assert line.endswith(": +40.0 (seed 1 only).") and "±" not in line
    three = {"fedloge": method(0.9, 3, [1, 2, 3]), "fedavg": method(0.5, 2, [1, 2])}
    three["fedrod"] = method(0.5, 3, [1, 2, 3])
    table = "\n".join(report.against_every_method(three))
    assert "| fedavg | +40.0 (seeds 1, 2) |" in table and "| fedrod | **+40.0** |" in table


def test_the_goal_is_judged_only_on_means_over_the_same_seeds():
    """A seed whose number is missing drops out of a mean silently: FedAvg's mean over two
    seeds against FedLoGe's over three is no comparison."""
    report = benchmark("fed_compare_report")
    keys = ("generic_acc", "local_acc_masked", "selected_generic", "selected_local")

    def row(mean, n):
        return {"seeds": [1, 2, 3], **{k: {"mean": mean, "std": 0.001, "n": n} for k in keys}}

    ours, full, short = row(0.90, 3), row(0.80, 3), row(0.80, 2)
    assert "Goal at the final round: met" in "\n".join(report.goal(ours, full))
    assert all("not judged (a seed's number missing)" in line for line in report.goal(ours, short))
    assert "not judged (a seed's number missing)" in "\n".join(
        report.verdict({"fedloge": ours, "fedavg": short})
    )


def test_a_tuned_method_is_not_judged_against_one_at_its_defaults():
    """FedLoGe's sweep still running: fed_compare would have trained its defaults, and a gap
    between a tuned FedAvg and an untuned FedLoGe says nothing of either method."""
    report = benchmark("fed_compare_report")
    keys = [key for key, _ in report.RIVALS]

    def row(mean, selected_by, seeds=(1, 2, 3)):
        stats = {k: {"mean": mean, "std": 0.001, "n": len(seeds)} for k in keys}
        return {"seeds": list(seeds), "selected_by": selected_by, **stats}

    rows = {"fedloge": row(0.9, "defaults"), "fedavg": row(0.5, "validation")}
    text = "\n".join(report.verdict(rows))
    assert "FedLoGe beats" not in text and "Goal at the final round: met" not in text
    assert "not judged (FedLoGe at its defaults)" in text
    table = "\n".join(report.against_every_method(rows))
    assert "| fedavg | +40.0 (FedLoGe at its defaults) |" in table
    # on one seed (CIFAR-10's case) too: the untuned side is said before the seed count
    one = {"fedloge": row(0.9, "validation", [1]), "fedavg": row(0.5, "defaults", [1])}
    text = "\n".join(report.verdict(one))
    assert "not judged (the rival at its defaults)" in text and "too few" not in text
    assert "| fedavg | +40.0 (the rival at its defaults) |" in "\n".join(
        report.against_every_method(one)
    )
    runs = {
        a: [{"seed": 1, "tuned": a == "fedloge", **dict.fromkeys(keys, m)}]
        for a, m in (("fedloge", 0.9), ("fedavg", 0.5))
    }
    paired = benchmark("fed_compare_numbers").paired(runs)
    assert all("fedavg at defaults, not judged" in line for line in report.paired_lines(paired)[1:])


def test_a_number_a_method_lacks_is_neither_a_verdict_nor_a_goal():
    report = benchmark("fed_compare_report")
    keys = [key for key, _ in report.RIVALS]
    ours = {"seeds": [1], "selected_by": "validation"}
    ours |= {k: {"mean": 0.9, "std": 0.0, "n": 1} for k in keys}
    none = {**ours, **{k: {"mean": float("nan"), "std": float("nan"), "n": 0} for k in keys}}
    text = "\n".join(report.verdict({"fedloge": ours, "fedavg": none}))
    assert "nan" not in text and "Goal at the final round: not judged (no such number)." in text


def test_two_untuned_methods_are_compared_and_other_seeds_are_named_before_one_seed():
    report = benchmark("fed_compare_report")
    keys = [key for key, _ in report.RIVALS]
    runs = {
        a: [{"seed": s, "tuned": False, **dict.fromkeys(keys, m)} for s in (1, 2, 3)]
        for a, m in (("fedloge", 0.9), ("fedavg", 0.5))
    }
    paired = benchmark("fed_compare_numbers").paired(runs)
    assert not any("at defaults" in line for line in report.paired_lines(paired))

    def row(seeds):
        stats = {k: {"mean": 0.5, "std": 0.001, "n": len(seeds)} for k in keys}
        return {"seeds": seeds, "selected_by": "validation", **stats}

    rows = {"fedloge": row([1, 2, 3]), "fedrep": row([3])}
    assert "| fedrep | +0.0 (seeds 3) | +0.0 (seeds 3) |" in "\n".join(
        report.against_every_method(rows)
    )
